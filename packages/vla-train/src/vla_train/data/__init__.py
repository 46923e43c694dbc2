"""Datasets for training: a registry of types built by ``build_dataset(cfg)``."""
