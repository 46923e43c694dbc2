"""vla_train."""
