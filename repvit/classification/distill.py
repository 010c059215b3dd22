"""Knowledge distillation as in DeiT and the RepViT paper: the student's second head learns from
a frozen teacher that sees the same (mixed) images.

``hard``: (1 - alpha) * CE(cls head, labels) + alpha * CE(dist head, teacher argmax) -- the paper.
``soft``: the distillation term is KL(student/tau || teacher/tau) * tau^2, averaged over the batch
(Hinton's scaling; DeiT divides by the number of logits instead, which shrinks it ~1000x on ImageNet).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..models.checkpoint import CheckpointError, read_file
from ..models.factory import create_model
from ..models.model import list_models
from ..models.state_dict import load_strict


class DistillationLoss(nn.Module):
    """Wraps the base criterion; ``forward(images, outputs, targets)`` with ``outputs`` the
    student's training-mode output (a ``(cls, dist)`` pair when distilling)."""

    def __init__(self, base: nn.Module, teacher: Optional[nn.Module], kind: str = "none", alpha: float = 0.5,
                 tau: float = 1.0):
        super().__init__()
        if kind not in ("none", "soft", "hard"):
            raise ValueError(f"distillation kind must be none, soft or hard, got {kind!r}")
        if kind != "none" and teacher is None:
            raise ValueError(f"{kind} distillation needs a teacher model")
        self.base, self.teacher, self.kind, self.alpha, self.tau = base, teacher, kind, alpha, tau

    def forward(self, images: torch.Tensor, outputs, targets: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            if isinstance(outputs, tuple):
                raise ValueError("the model has a distillation head but distillation is off; build it with "
                                 "distillation=False or pass --distillation-type soft|hard")
            return self.base(outputs, targets)
        if not isinstance(outputs, tuple):
            raise ValueError("distillation needs a model built with distillation=True in training mode "
                             "(its forward returns the class and distillation logits)")
        cls_logits, dist_logits = outputs
        base_loss = self.base(cls_logits, targets)
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        if self.kind == "soft":
            t = self.tau
            distill = F.kl_div(F.log_softmax(dist_logits.float() / t, dim=1),
                               F.log_softmax(teacher_logits.float() / t, dim=1),
                               reduction="batchmean", log_target=True) * (t * t)
        else:
            distill = F.cross_entropy(dist_logits, teacher_logits.argmax(dim=1))
        return (1 - self.alpha) * base_loss + self.alpha * distill


def build_teacher(name: str, checkpoint: Optional[str], num_classes: int) -> nn.Module:
    """A frozen, eval-mode teacher from one of our checkpoints, our variant names, timm or torchvision."""
    if name and Path(name).is_file():  # one of our checkpoints (or any file the model library reads)
        teacher = create_model(checkpoint=name)
    elif checkpoint is None:
        raise ValueError(f"distillation needs the teacher's weights and nothing is downloaded: pass "
                         f"--teacher-checkpoint PATH for --teacher {name}, give --teacher the path of one of our "
                         "checkpoints, or turn distillation off with --distillation-type none")
    elif name in list_models():
        teacher = create_model(name, checkpoint=checkpoint)
    else:
        teacher = _build_foreign(name, num_classes)
        _load_foreign(teacher, checkpoint, name)
    classes = _num_outputs(teacher)
    if classes is not None and classes != num_classes:
        raise ValueError(f"the teacher predicts {classes} classes but the data has {num_classes}; distil from a "
                         "teacher trained on the same classes")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _build_foreign(name: str, num_classes: int) -> nn.Module:
    import timm
    import torchvision
    if timm.is_model(name):
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    if name in torchvision.models.list_models():
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    raise ValueError(f"unknown teacher {name!r}: give a timm or torchvision architecture name (e.g. regnety_160), "
                     "one of ours (repvit.list_models()), or the path of one of our checkpoints")


def _load_foreign(model: nn.Module, path: str, name: str) -> None:
    try:
        obj, _ = read_file(path)
    except CheckpointError as err:
        raise ValueError(f"--teacher-checkpoint: {err}") from None
    for key in ("model", "state_dict", "model_ema", "state_dict_ema"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    load_strict(model, state, source=f"--teacher-checkpoint {path!r}",
                what=f"the {name} architecture with {_num_outputs(model)} classes",
                fix="check that --teacher names the architecture the weights were trained with")


def _num_outputs(model: nn.Module) -> Optional[int]:
    if hasattr(model, "num_classes"):
        return int(model.num_classes)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else None
