"""LoadModel internals: spec parsing, model resolution, special loaders, placement."""
