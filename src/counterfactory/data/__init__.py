"""Datasets, splits, the procedural surfaces generator and mask-aware augmentation."""
