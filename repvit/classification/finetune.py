"""Starting a run from existing weights (``--finetune PATH`` or ``--pretrained NAME[:TAG]``): any
checkpoint the model library reads (ours, the official releases, timm's) or official weights, with the classifier kept when it fits the new data and
replaced, with a message, when the number of classes differs."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models.checkpoint import describe_state_dict, load_state_dict, read_checkpoint
from ..models.pretrained import fetch
from ..models.releases import find_release, parse_spec


@dataclass
class FinetuneSource:
    path: str
    state: dict
    meta: dict
    label: str = ""


def read_pretrained_source(spec: str) -> FinetuneSource:
    """``--pretrained NAME[:TAG]``: the official file (downloaded once, verified), as a fine-tuning source."""
    name, tag = parse_spec(spec)
    path = fetch(find_release(name, tag))
    source = read_finetune_source(path)
    source.meta = {**source.meta, "variant": name}
    source.label = f"--pretrained {spec} ({path})"
    return source


def read_finetune_source(path) -> FinetuneSource:
    state, meta = read_checkpoint(path)
    if describe_state_dict(state)["fused"]:
        raise ValueError(f"--finetune {str(path)!r} holds fused (inference-only) weights, which have no BatchNorm "
                         "left to train; fine-tune from the unfused checkpoint (e.g. last.pth or best.pth of a run)")
    return FinetuneSource(str(path), state, meta, label=f"--finetune {str(path)!r}")


def load_finetune_weights(model: nn.Module, source: FinetuneSource, log=print) -> None:
    """Load the backbone strictly; copy the classifier only where its shape fits."""
    label = source.label or f"--finetune {source.path!r}"
    load_state_dict(model, source.state, ignore_classifier=True, source=label)
    theirs = describe_state_dict(source.state)["num_classes"]
    if theirs != model.num_classes:
        log(f"{label} has {theirs or 'no'} classifier classes and the data has {model.num_classes}: "
            "the classifier starts from new random weights")
        return
    own = model.state_dict()
    copied = []
    with torch.no_grad():
        for key, value in own.items():
            if not key.startswith("classifier."):
                continue
            # A distillation head the checkpoint lacks starts as a copy of the class head.
            src = key if key in source.state else key.replace("classifier.classifier_dist.", "classifier.classifier.")
            if src in source.state and source.state[src].shape == value.shape:
                value.copy_(source.state[src])
                copied.append(key)
    dropped = [k for k in source.state if k.startswith("classifier.") and k not in own]
    log(f"{label}: loaded backbone and the {model.num_classes}-class classifier"
        + (" (its distillation head was dropped: distillation is off)" if dropped else ""))
