"""vla_backbones."""
