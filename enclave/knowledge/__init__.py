"""The knowledge base: loaders, chunking, the embedder, the Chroma store and hybrid search."""
