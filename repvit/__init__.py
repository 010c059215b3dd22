"""RepViT: Revisiting Mobile CNN From ViT Perspective (Wang et al., CVPR 2024), in PyTorch."""
from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .factory import create_model
from .inference import optimize_for_inference
from .model import RepViT, RepViTFeatures, list_models, register_model
from .reparam import is_fused, reparameterize
from .variants import VARIANTS, Variant
from . import roadmap  # noqa: F401  (registers roadmap_* models)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "RepViT", "RepViTFeatures", "VARIANTS", "Variant", "create_model", "is_fused",
    "list_models", "load_checkpoint", "optimize_for_inference", "read_checkpoint", "register_model", "reparameterize", "save_checkpoint",
]
