"""Data: find images on disk, decode them to grayscale, split, cache and augment."""
