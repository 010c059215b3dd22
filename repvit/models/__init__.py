"""The model library: variant table, layers and their fusion rules, the RepViT network,
re-parameterization, checkpoint formats, official pretrained weights and ``create_model``."""
