"""Generation engines behind the GenerationBackend seam; `build.build_backend` is the only place that chooses."""
