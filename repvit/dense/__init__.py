"""RepViT for dense prediction: the backbone adapter (tap conventions, frozen BatchNorm statistics,
frozen stages, weights from any classification checkpoint) and the FPN neck that torchvision's
detectors and our segmentation head share."""
