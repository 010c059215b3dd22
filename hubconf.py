"""torch.hub entry points: ``torch.hub.load("THU-MIG/RepViT"-style repo or a local clone, "repvit_m1_1", pretrained=True)``.

Each entry builds the registered model of that name; ``pretrained=True`` loads the best official
ImageNet-1k file, a tag (``"dist_300e"``, ``"dist_450e"``) picks one, and any other keyword goes
to ``repvit.create_model`` (``num_classes``, ``fused``, ``features_only``, ...).
"""
dependencies = ["torch", "torchvision", "timm", "safetensors", "yaml"]

from repvit.models.factory import create_model as _create_model  # noqa: E402
from repvit.models.releases import releases_for as _releases_for  # noqa: E402
from repvit.models.variants import VARIANTS as _VARIANTS  # noqa: E402


def _entry(name):
    tags = ", ".join(r.tag for r in _releases_for(name, "classification")) or "none"

    def build(pretrained=False, **kwargs):
        return _create_model(name, pretrained=pretrained, **kwargs)
    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"{name}: RepViT classifier (official weight tags: {tags}). "
                     "pretrained=True|TAG loads official weights; other keywords go to repvit.create_model.")
    return build


for _name in _VARIANTS:
    globals()[_name] = _entry(_name)


def repvit_sam(pretrained=False, **kwargs):
    """RepViT-SAM (segment_anything's Sam with a RepViT-M2.3 image encoder; needs segment-anything).
    pretrained=True loads the official repvit_sam.pt; other keywords go to repvit.sam.build_sam
    (checkpoint, fused, encoder_checkpoint)."""
    from repvit.sam import build_sam
    return build_sam(pretrained=pretrained, **kwargs)
