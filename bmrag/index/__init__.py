"""Index building and access (scale-out helpers: chroma_client, ray_engine)."""
