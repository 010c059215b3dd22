"""Parity checks: does an exported artifact compute what the fused PyTorch model computes?

Every export is checked on two kinds of input, because they fail differently: random
normal tensors exercise every channel at full range, and real photographs, preprocessed
exactly as the model's ``preprocessing`` record says, produce the activation statistics
a deployed model sees. The largest absolute logit difference is compared with the
format's tolerance, and top-1 agreement is reported alongside.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG", ".JPG", ".PNG")

# Absolute tolerances on the largest logit difference (the contract), and the relative
# ones (to the largest reference logit) for reduced-precision artifacts.
TOLERANCES = {"onnx": 1e-4, "torchscript": 1e-5, "executorch": 1e-4, "coreml": 1e-3, "openvino": 1e-4, "litert": 1e-4}
REL_TOLERANCES = {"fp16": 2e-2}


class ParityError(ValueError):
    """An exported artifact disagrees with the fused PyTorch model beyond its tolerance."""


@dataclass
class ParityReport:
    artifact: str
    inputs: str            # "random" or "real"
    count: int             # images compared
    max_abs_diff: float
    max_abs_logit: float   # of the reference, for scale
    tolerance: float
    top1_agreement: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def line(self) -> str:
        verdict = "OK" if self.passed else "FAILED"
        return (f"{self.artifact} vs fused PyTorch, {self.count} {self.inputs} images: max |diff| "
                f"{self.max_abs_diff:.3e} (tolerance {self.tolerance:.1e}, largest logit {self.max_abs_logit:.2f}), "
                f"top-1 agreement {self.top1_agreement:.1%} -> {verdict}")

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


# --------------------------------------------------------------------------- inputs
def default_real_images() -> list[Path]:
    """Two real photographs that ship with matplotlib (a declared dependency), for a fresh clone."""
    import matplotlib
    folder = Path(matplotlib.get_data_path()) / "sample_data"
    return [p for p in (folder / "grace_hopper.jpg", folder / "Minduka_Present_Blue_Pack.png") if p.is_file()]


def find_images(source: Union[str, os.PathLike, Sequence, None], limit: int) -> list[Path]:
    """Up to ``limit`` image files: from a folder (searched recursively, spread over its
    sub-folders so several classes are represented), a list of files, or the default photos."""
    if source is None:
        return default_real_images()[:limit]
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if root.is_file():
            return [root]
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
        groups: dict[Path, list[Path]] = {}
        for p in sorted(root.rglob("*")):
            if p.suffix in IMAGE_SUFFIXES and p.is_file():
                groups.setdefault(p.parent, []).append(p)
        if not groups:
            raise ValueError(f"no images ({', '.join(sorted(set(s.lower() for s in IMAGE_SUFFIXES)))}) under {str(root)!r}")
        picked, depth = [], 0
        while len(picked) < limit and any(depth < len(g) for g in groups.values()):
            picked += [g[depth] for g in groups.values() if depth < len(g)]
            depth += 1
        return picked[:limit]
    return [Path(p) for p in source][:limit]


def load_crop(path: Union[str, os.PathLike], preprocessing: dict) -> Image.Image:
    """RGB image resized (shorter side to floor(size / crop_pct), as timm's eval transform and
    the training engine do) and centre-cropped to the input size."""
    size = int(preprocessing["input_size"][-1])
    scale = math.floor(size / float(preprocessing.get("crop_pct", 1.0)))
    interp = InterpolationMode(preprocessing.get("interpolation", "bicubic"))
    with Image.open(path) as img:
        img = img.convert("RGB")
    return TF.center_crop(TF.resize(img, scale, interpolation=interp), [size, size])


def normalize(img: Image.Image, preprocessing: dict) -> torch.Tensor:
    """PIL crop -> float32 CHW tensor normalized with the record's mean and std."""
    return TF.normalize(TF.pil_to_tensor(img).float().div_(255), list(preprocessing["mean"]), list(preprocessing["std"]))


def real_batch(paths: Iterable[Union[str, os.PathLike]], preprocessing: dict) -> torch.Tensor:
    tensors = [normalize(load_crop(p, preprocessing), preprocessing) for p in paths]
    if not tensors:
        raise ValueError("no real images to verify with")
    return torch.stack(tensors)


def random_batch(count: int, img_size: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, img_size, img_size, generator=gen)


def verification_inputs(preprocessing: dict, *, images=None, num_random: int = 4, num_real: int = 8,
                        seed: int = 0) -> dict[str, torch.Tensor]:
    """``{"random": (N,3,S,S), "real": (M,3,S,S)}`` at the preprocessing record's input size."""
    size = int(preprocessing["input_size"][-1])
    inputs = {"random": random_batch(num_random, size, seed)}
    if num_real > 0:
        inputs["real"] = real_batch(find_images(images, num_real), preprocessing)
    return inputs


# --------------------------------------------------------------------------- comparing
@torch.no_grad()
def compare(reference: Callable[[torch.Tensor], torch.Tensor], candidate: Callable[[torch.Tensor], torch.Tensor],
            inputs: dict[str, torch.Tensor], *, artifact: str, tolerance: float,
            rel_tolerance: Optional[float] = None) -> list[ParityReport]:
    """One report per input kind. ``rel_tolerance`` scales with the largest reference logit."""
    reports = []
    for kind, batch in inputs.items():
        want = reference(batch).float()
        got = torch.as_tensor(candidate(batch)).float()
        if got.shape != want.shape:
            raise ParityError(f"{artifact}: output shape {tuple(got.shape)} != fused model's {tuple(want.shape)}")
        scale = want.abs().max().item()
        tol = tolerance if rel_tolerance is None else rel_tolerance * max(scale, 1.0)
        reports.append(ParityReport(
            artifact=artifact, inputs=kind, count=int(batch.shape[0]),
            max_abs_diff=float((got - want).abs().max().item()) if torch.isfinite(got).all() else float("inf"),
            max_abs_logit=scale, tolerance=float(tol),
            top1_agreement=float((got.argmax(1) == want.argmax(1)).float().mean().item())))
    return reports


def max_abs_diff(got, want) -> float:
    """Largest ``|got - want|`` of two arrays or tensors of one shape (``inf`` when ``got`` is not finite)."""
    got = torch.as_tensor(np.asarray(got)).float()
    want = torch.as_tensor(np.asarray(want)).float()
    if got.shape != want.shape:
        raise ParityError(f"output shape {tuple(got.shape)} != reference {tuple(want.shape)}")
    return float((got - want).abs().max()) if torch.isfinite(got).all() else float("inf")


def require(reports: Sequence[ParityReport]) -> None:
    """Raise ``ParityError`` naming every failed check."""
    failed = [r for r in reports if not r.passed]
    if failed:
        raise ParityError("parity check failed:\n  " + "\n  ".join(r.line() for r in failed))


def per_sample(run_one: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Adapt a fixed-batch-1 runner to batches, one image at a time."""
    return lambda batch: torch.cat([torch.as_tensor(run_one(batch[i:i + 1])) for i in range(batch.shape[0])])
