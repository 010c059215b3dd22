"""Shared fixtures and the one policy for real test data.

Real data (Imagenette-96, CamVid, raccoon, fruit, coco128-instances, videos) lives in
``../shared/data`` beside the checkout (or ``$REPVIT_SHARED_DATA``) and is never copied into the
repository. A test whose data is missing FAILS, naming the folder and how to provide it: it never
skips, so a run without the data cannot pass by testing less. (Skips remain only for optional
dependencies, such as coremltools, that an install may lack.)
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

import pytest
import torch

# Under pytest-xdist (`make test` runs two workers on a 2-core machine) each worker computes with one
# thread: two workers with two spinning OpenMP threads each would oversubscribe the cores (a
# 2-thread PyTorch job slows about 3x beside one more busy thread). Subprocesses inherit the limit.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("REPVIT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
IMAGENETTE = Path(os.environ.get("REPVIT_IMAGENETTE", SHARED_DATA / "imagenette-96"))


def shared_data(relative: str, *, pattern: Optional[str] = None, path: Optional[Path] = None) -> Path:
    """``SHARED_DATA / relative`` (or ``path``), failing the test when it is missing.

    ``pattern``: a glob (searched recursively) that must match at least one file inside the folder.
    """
    path = Path(path) if path is not None else SHARED_DATA / relative
    found = path.exists() and (pattern is None or next(path.rglob(pattern), None) is not None)
    if not found:
        what = f"no {pattern} files under {path}" if path.is_dir() else f"{path} does not exist"
        pytest.fail(f"real test data missing: {what}. The tests read ../shared/data beside the checkout "
                    f"(here {SHARED_DATA}); provide it by linking the shared data folder there "
                    "(ln -s /path/to/shared ../shared) or by setting REPVIT_SHARED_DATA=/path/to/shared/data "
                    "(REPVIT_IMAGENETTE for Imagenette alone). Missing data fails, it is never skipped.",
                    pytrace=False)
    return path


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def imagenette_root() -> Path:
    """The real Imagenette-96 folder (train/ and val/ of class folders)."""
    shared_data("imagenette-96/train", path=IMAGENETTE / "train")
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


AFTER_CRASH = Path(__file__).resolve().parents[1] / ".pytest-after-crash"
_RUN: dict = {"collected": [], "done": set(), "crashed": []}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """(The controller, under xdist.) Every test the run is to hold, as a worker collected them."""
    if not _RUN["collected"]:
        _RUN["collected"] = list(ids)


def pytest_runtest_logreport(report):
    """(The controller, under xdist: every worker's reports arrive here.) Which tests ran to an outcome, and
    which one a dying worker took with it."""
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _RUN["done"].add(report.nodeid)
    if report.failed and "crashed while running" in str(report.longrepr):
        _RUN["crashed"].append(report.nodeid)


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):
        # The controller. A worker that dies (a native crash, silent) ends the run with that test failed and the
        # rest of its file unrun (--max-worker-restart 0: xdist's file scheduler hangs when it replaces a worker
        # near the end). The Makefile then runs .pytest-after-crash, those tests, again in one process: a crash
        # that happens again, or any real failure, still fails the run.
        AFTER_CRASH.unlink(missing_ok=True)
        if _RUN["crashed"]:
            rerun = [i for i in _RUN["collected"] if i not in _RUN["done"] or i in _RUN["crashed"]]
            AFTER_CRASH.write_text("".join(f"{nodeid}\n" for nodeid in rerun))
            print(f"\n[tests] a worker died running {', '.join(_RUN['crashed'])}; the {len(rerun)} tests it left are "
                  f"listed in {AFTER_CRASH.name}", flush=True)
        return
    _worker_exit_guard()


def _worker_exit_guard():
    """A worker that cannot exit after its last test (a thread that never ends: a server, a reader) would
    leave the whole run waiting for it: if the process is still alive two minutes after its last test,
    print every thread's stack and end it, so the run finishes and says where it hung."""
    import faulthandler
    import sys
    faulthandler.dump_traceback_later(120, exit=True, file=sys.__stderr__)
