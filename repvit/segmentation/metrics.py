"""Semantic segmentation metrics from one confusion matrix: per-class IoU, mIoU, aAcc, mAcc.

Values are fractions (1.0 is perfect; multiply by 100 for the paper's tables). A class that
appears neither in the labels nor in the predictions has no IoU (``None``) and is left out of
the mean, as mmsegmentation does; pixels labelled ``ignore_index`` are not counted.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch


class ConfusionMatrix:
    def __init__(self, num_classes: int, *, ignore_index: Optional[int] = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be 1 or more, got {num_classes}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)   # rows: label, columns: prediction

    @torch.no_grad()
    def update(self, prediction: torch.Tensor, label: torch.Tensor) -> None:
        """Add a batch: ``prediction`` class indices (or ``[N, C, H, W]`` logits) and ``label`` indices."""
        if prediction.dim() == label.dim() + 1:
            prediction = prediction.argmax(dim=1)
        if prediction.shape != label.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and label {tuple(label.shape)} differ in shape")
        prediction, label = prediction.reshape(-1).long().cpu(), label.reshape(-1).long().cpu()
        keep = label != self.ignore_index if self.ignore_index is not None else torch.ones_like(label, dtype=torch.bool)
        prediction, label = prediction[keep], label[keep]
        bad = (label < 0) | (label >= self.num_classes)
        if bad.any():
            raise ValueError(f"label values {sorted(set(label[bad].tolist()))[:5]} are outside 0..{self.num_classes - 1} "
                             f"and not the ignore value {self.ignore_index}")
        self.matrix += torch.bincount(label * self.num_classes + prediction.clamp(0, self.num_classes - 1),
                                      minlength=self.num_classes ** 2).reshape(self.num_classes, self.num_classes)

    def merge(self, other: "ConfusionMatrix") -> None:
        self.matrix += other.matrix

    def compute(self, class_names: Optional[Sequence[str]] = None) -> dict:
        m = self.matrix.double()
        true_pos, labelled, predicted = m.diag(), m.sum(dim=1), m.sum(dim=0)
        union = labelled + predicted - true_pos
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        iou = [float(t / u) if u > 0 else None for t, u in zip(true_pos, union)]
        acc = [float(t / n) if n > 0 else None for t, n in zip(true_pos, labelled)]
        present = [v for v in iou if v is not None]
        present_acc = [v for v in acc if v is not None]
        total = float(labelled.sum())
        return {"mIoU": sum(present) / len(present) if present else None,
                "aAcc": float(true_pos.sum()) / total if total else None,
                "mAcc": sum(present_acc) / len(present_acc) if present_acc else None,
                "IoU": dict(zip(names, iou)), "pixels": int(total)}
