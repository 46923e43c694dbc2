"""vla_heads."""
