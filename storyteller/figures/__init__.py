"""Loss curves, caption grids and attention maps."""
