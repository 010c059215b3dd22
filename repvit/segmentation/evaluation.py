"""Scoring a segmentation model on a labelled folder (mIoU, aAcc, per-class IoU), and drawing its
class maps over images."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..engine.distributed import DistEnv, each_rank, shard
from .data import EvalResize, SemanticFolder
from .metrics import ConfusionMatrix


@torch.no_grad()
def evaluate_segmenter(model: nn.Module, data: SemanticFolder, *, device: torch.device = torch.device("cpu"),
                       class_names: Sequence[str], env: Optional[DistEnv] = None,
                       progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Whole images, one at a time (any size): the metrics of ``ConfusionMatrix.compute`` plus counts;
    ``progress(done, total)`` is called after each image with this process's count and its share's size.

    Where the dataset's ``transforms`` resized the image (``EvalResize``), the logits are resized
    back to the label's size (bilinear) before the argmax, so scores are at the label's resolution.
    Under torchrun (``env`` of a distributed run, called on every rank) each rank scores its share
    of the images and the confusion matrices are summed, so every rank returns the metrics of the
    whole set, the same as one process would. Data built with a ``split`` adds ``val_split`` and
    its frames per ``sequences`` to the result."""
    model = model.eval().to(device)

    def score_share() -> torch.Tensor:
        matrix = ConfusionMatrix(data.num_classes, ignore_index=data.ignore_index)
        mine = shard(range(len(data)), env)
        for done, index in enumerate(mine, 1):
            image, label = data[index]
            logits = model(image[None].to(device))
            if logits.shape[-2:] != label.shape[-2:]:
                logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
            matrix.update(logits.argmax(dim=1).cpu(), label[None])
            if progress is not None:
                progress(done, len(mine))
        return matrix.matrix

    total = ConfusionMatrix(data.num_classes, ignore_index=data.ignore_index)
    for part in each_rank(score_share, env):
        total.matrix += part
    held_out = ({"val_split": data.split, "sequences": dict(sorted(data.sequences().items()))}
                if getattr(data, "split", None) else {})   # scored a split of a dataset root: which frames
    return {**total.compute(class_names), "images": len(data), "skipped": len(data.skipped), **held_out}


def palette(num_classes: int) -> np.ndarray:
    """A fixed colour per class index (bit-interleaved, as the PASCAL VOC palette is built)."""
    colours = np.zeros((max(num_classes, 1), 3), dtype=np.uint8)
    for index in range(num_classes):
        value, bit = index + 1, 7
        while value:
            for channel in range(3):
                colours[index, channel] |= ((value >> channel) & 1) << bit
            value >>= 3
            bit -= 1
    return colours


@torch.no_grad()
def predict_images(model: nn.Module, paths: Sequence[Path], output_dir: Path, *, class_names: Sequence[str],
                   device: torch.device = torch.device("cpu"), alpha: float = 0.5,
                   eval_size: Optional[tuple[int, int]] = None) -> list[dict]:
    """Per image: ``<stem>.png`` (the colour-coded class map blended over the photo) and
    ``<stem>_classes.png`` (the class indices, one channel), both at the photo's size.

    ``eval_size`` (a model's recorded ``eval_size``) runs the model on the image resized as
    ``evaluate_segmenter`` sees it (``EvalResize``) and resizes the logits back, so a prediction is
    what the reported mIoU measured; None runs at the photo's own size."""
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor
    output_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval().to(device)
    colours = palette(len(class_names))
    resize = EvalResize(eval_size)
    results = []
    for path in paths:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        pixels = pil_to_tensor(rgb).float() / 255.0
        resized, _ = resize(pixels, None)
        logits = model(resized[None].to(device))
        if logits.shape[-2:] != pixels.shape[-2:]:
            logits = F.interpolate(logits, size=pixels.shape[-2:], mode="bilinear", align_corners=False)
        classes = logits.argmax(dim=1)[0].cpu().numpy().astype(np.uint8)
        overlay = (np.asarray(rgb) * (1 - alpha) + colours[classes] * alpha).astype(np.uint8)
        drawn, raw = output_dir / f"{Path(path).stem}.png", output_dir / f"{Path(path).stem}_classes.png"
        Image.fromarray(overlay).save(drawn)
        Image.fromarray(classes, mode="L").save(raw)
        counts = np.bincount(classes.reshape(-1), minlength=len(class_names))
        results.append({"image": str(path), "drawn": str(drawn), "classes_png": str(raw),
                        "fractions": {class_names[i]: round(float(c) / classes.size, 4)
                                      for i, c in enumerate(counts) if c}})
    return results
