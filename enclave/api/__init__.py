"""The HTTP face: the FastAPI app, its typed state, auth, routers/, web/, the model server."""
