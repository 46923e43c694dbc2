"""The built-in toy 2D reach task (numpy only)."""
