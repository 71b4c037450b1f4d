"""raygram."""
