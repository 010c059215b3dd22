"""Using trained weights (a checkpoint file or official ``pretrained`` weights): accuracy on a
labelled folder (``repvit eval``) and top-k class predictions for image files
(``repvit predict``). Both run the fused (re-parameterized) model, with the preprocessing the
weights record."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from ..models.factory import create_model_from
from ..models.reparam import reparameterize
from .data import (ImageDataset, ShardSampler, eval_folder, eval_transform, find_bad_images, is_image_file, load_rgb,
                   make_loader, scan_class_folders)
from ..engine.distributed import DistEnv, pick_device
from .evaluation import evaluate


def load_fused(checkpoint=None, *, pretrained: Optional[str] = None, use_ema: bool = False,
               device: torch.device = torch.device("cpu")) -> torch.nn.Module:
    """The model of ``checkpoint`` (or of official weights ``pretrained="NAME[:TAG]"``), re-parameterized
    for inference (fused weights stay as they are)."""
    model = create_model_from(checkpoint=checkpoint, pretrained=pretrained, use_ema=use_ema)
    fused = reparameterize(model.eval())
    fused.class_names = getattr(model, "class_names", None)
    fused.class_ids = getattr(model, "class_ids", None)
    fused.preprocessing = getattr(model, "preprocessing", None) or fused.preprocessing
    return fused.to(device)


def evaluate_checkpoint(checkpoint, data, *, batch_size: int = 64, workers: int = 2, device: str = "auto",
                        use_ema: bool = False, skip_bad: bool = False, pretrained: Optional[str] = None,
                        log=print) -> dict:
    """Top-1/top-5 (percent) and loss of a checkpoint on a folder of class folders (or DATA/val)."""
    if batch_size < 1 or workers < 0:
        raise ValueError(f"--batch-size must be 1 or more and --workers 0 or more (got {batch_size}, {workers})")
    dev = pick_device(device)
    model = load_fused(checkpoint, pretrained=pretrained, use_ema=use_ema, device=dev)
    folder = eval_folder(data)
    known = model.class_names
    if model.class_ids and _folder_names(folder) <= set(model.class_ids):
        known = model.class_ids  # ImageNet-style folders named by WordNet id
    samples, class_names = scan_class_folders(folder, known)
    if not known:
        if len(class_names) != model.num_classes:
            raise ValueError(f"the checkpoint records no class names, so folders are matched to outputs in sorted "
                             f"order, which needs one folder per class: {folder} has {len(class_names)} class "
                             f"folders, the model {model.num_classes} outputs")
        log(f"note: the checkpoint has no class names; folder i (sorted) is taken as class i")
    env = DistEnv(device=dev)
    skipped = find_bad_images(samples, env, workers) if skip_bad else []
    if skipped:
        bad = {p for p, _ in skipped}
        samples = [s for s in samples if s[0] not in bad]
        log(f"skipped {len(skipped)} unreadable images, e.g. {skipped[0][0]} ({skipped[0][1]})")
    dataset = ImageDataset(samples, class_names, eval_transform(model.preprocessing))
    loader = make_loader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), 0, 1), workers=workers,
                         device=dev, drop_last=False)
    stats = evaluate(model, loader, env)
    return {"top1": stats["top1"], "top5": stats["top5"], "loss": stats["loss"], "images": stats["images"],
            "skipped": len(skipped), "classes": len({t for _, t in samples}), "checkpoint": str(checkpoint) if checkpoint else None, "pretrained": pretrained,
            "data": str(folder), "fused": True, "ema": use_ema,
            "img_size": int(model.preprocessing["input_size"][-1])}


def _folder_names(folder) -> set[str]:
    return {p.name for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith(".")}


def expand_images(paths: Sequence) -> list[Path]:
    """Image files named directly, or found (sorted) inside named folders."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f.name)))
        elif p.is_file():
            out.append(p)
        else:
            raise ValueError(f"image {str(p)!r} does not exist")
    if not out:
        raise ValueError(f"no image files found in {', '.join(map(str, paths))}")
    return out


@torch.no_grad()
def predict(checkpoint, images: Sequence, *, topk: int = 5, device: str = "auto", use_ema: bool = False,
            batch_size: int = 32, pretrained: Optional[str] = None) -> list[dict]:
    """``[{"image", "top": [{"class", "label", "index", "probability"}]}]`` per image, best first."""
    dev = pick_device(device)
    model = load_fused(checkpoint, pretrained=pretrained, use_ema=use_ema, device=dev)
    transform = eval_transform(model.preprocessing)
    names = model.class_names or [str(i) for i in range(model.num_classes)]
    k = max(1, min(topk, model.num_classes))
    files = expand_images(images)
    results = []
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        batch = torch.stack([transform(load_rgb(f)) for f in chunk]).to(dev)
        probs = model(batch).float().softmax(dim=1)
        top = probs.topk(k, dim=1)
        for f, values, indices in zip(chunk, top.values.tolist(), top.indices.tolist()):
            results.append({"image": str(f), "top": [
                {"class": names[i], "label": describe_class(names[i]), "index": i, "probability": p}
                for p, i in zip(values, indices)]})
    return results


_IMAGENET_INFO = None


def describe_class(name: str) -> Optional[str]:
    """A readable label for ImageNet WordNet ids such as ``n01440764`` (tench), else None."""
    global _IMAGENET_INFO
    if not (len(name) == 9 and name[0] == "n" and name[1:].isdigit()):
        return None
    try:
        if _IMAGENET_INFO is None:
            from timm.data import ImageNetInfo
            _IMAGENET_INFO = ImageNetInfo()
        return _IMAGENET_INFO.label_name_to_description(name)
    except (ImportError, KeyError, OSError):
        return None
