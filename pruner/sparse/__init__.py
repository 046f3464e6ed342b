"""CPU sparse kernel (placeholder during build)."""
