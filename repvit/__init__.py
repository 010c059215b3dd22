"""RepViT: Revisiting Mobile CNN From ViT Perspective (Wang et al., CVPR 2024), in PyTorch."""
from . import _moved

_moved.install()  # old import paths of moved modules keep working for one release (repvit/_moved.py)
from .models.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .models.factory import create_model
from .runtime.optimize import optimize_for_inference
from .models.model import RepViT, RepViTFeatures, list_models, register_model
from .models.reparam import is_fused, reparameterize
from .models.variants import VARIANTS, Variant
from . import roadmap  # noqa: F401  (registers roadmap_* models)

from .version import __version__  # noqa: E402

__all__ = [
    "CheckpointError", "RepViT", "RepViTFeatures", "VARIANTS", "Variant", "create_model", "is_fused",
    "list_models", "load_checkpoint", "optimize_for_inference", "read_checkpoint", "register_model", "reparameterize", "save_checkpoint",
]
