"""``repvit segment train``: Semantic FPN on the shared training loop (options: ``repvit.dense.options``)."""
from __future__ import annotations

from .._dense import add_train


def register(actions) -> None:
    add_train(actions, "segment", "..segmentation.training")
