"""Object detection and instance segmentation with a RepViT backbone, on torchvision's detectors."""
