"""Shared fixtures. Real images come from ../shared/data/imagenette-96 (never copied into the repo)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGENETTE = Path(os.environ.get("REPVIT_IMAGENETTE", REPO_ROOT.parent / "shared" / "data" / "imagenette-96"))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def imagenette_root() -> Path:
    """The real Imagenette-96 folder (train/ and val/ of class folders)."""
    if not (IMAGENETTE / "train").is_dir():
        pytest.fail(f"real test data not found at {IMAGENETTE}: CI expects ../shared/data/imagenette-96 beside "
                    "the checkout (or set REPVIT_IMAGENETTE)")
    return IMAGENETTE


def make_subset(root: Path, dest: Path, per_class_train: int, per_class_val: int, classes: int = 10) -> Path:
    """Copy the first few real images of each class into ``dest`` (an ImageFolder with train/ and val/)."""
    for split, count in (("train", per_class_train), ("val", per_class_val)):
        for class_dir in sorted((root / split).iterdir())[:classes]:
            out = dest / split / class_dir.name
            out.mkdir(parents=True, exist_ok=True)
            for image in sorted(class_dir.iterdir())[:count]:
                shutil.copyfile(image, out / image.name)
    return dest


@pytest.fixture(scope="session")
def tiny_imagenette(imagenette_root, tmp_path_factory) -> Path:
    """A 10-class real-image subset: 8 train and 4 val images per class."""
    return make_subset(imagenette_root, tmp_path_factory.mktemp("imagenette-tiny"), 8, 4)
