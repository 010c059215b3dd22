"""Semantic segmentation with a RepViT backbone."""
