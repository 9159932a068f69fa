"""The data layer: sources, index, query, volumes, cache and synthetic data."""
