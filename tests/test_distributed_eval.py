"""Sharded evaluation under torchrun, and the process-group timeout.

Two gloo ranks on CPU (``torch.multiprocessing`` processes joined through ``repvit.engine.distributed.setup``)
score real data: the Semantic FPN confusion matrix on CamVid, COCO AP of a random-weight Faster R-CNN and of
an "oracle" that answers from the ground truth on fruit (so AP is neither 0 nor 1 and would move if a rank's
share were lost), and the SAM distillation MSE over a teacher cache the two ranks fill together. Every rank
must return exactly what one process returns on the whole set; five images make the shares unequal.
"""
from __future__ import annotations

import os
import pickle
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from torch import nn

from repvit.engine import distributed
from repvit.engine.distributed import DistEnv, each_rank, shard

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CAMVID = "Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist".split(",")
IMAGES = 5           # odd: two ranks get unequal shares
BATCH = 2            # detection and MSE batches: rank 0 scores images 0, 1, 4; rank 1 images 2, 3
TIMEOUT = timedelta(minutes=7.5)


def need(folder: str) -> Path:
    path = DATA / folder
    if not path.is_dir():
        pytest.fail(f"real test data not found at {path}: CI expects ../shared/data beside the checkout")
    return path


# --------------------------------------------------------------------------- no process group needed
def test_shard_deals_whole_blocks_in_turn():
    two = [DistEnv(rank=r, world_size=2) for r in range(2)]
    assert [shard(range(5), env) for env in two] == [[0, 2, 4], [1, 3]]
    assert [shard(range(5), env, block=2) for env in two] == [[0, 1, 4], [2, 3]]
    three = [shard(range(7), DistEnv(rank=r, world_size=3), block=2) for r in range(3)]
    assert three == [[0, 1, 6], [2, 3], [4, 5]]
    assert shard(range(5), None) == shard(range(5), DistEnv()) == [0, 1, 2, 3, 4]
    assert shard([], two[1]) == []
    with pytest.raises(ValueError, match="block"):
        shard(range(5), two[0], block=0)


def test_setup_hands_the_timeout_to_init_process_group(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: calls.append(kw))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    distributed.setup("cpu", timeout=12.5)
    distributed.setup("cpu", timeout=timedelta(seconds=90))
    distributed.setup("cpu")
    assert [c["timeout"] for c in calls] == [timedelta(minutes=12.5), timedelta(seconds=90), timedelta(minutes=60)]
    assert all(c["backend"] == "gloo" for c in calls)
    for bad in (0, -1, float("nan"), "soon", timedelta(0)):
        with pytest.raises(ValueError, match="timeout"):
            distributed.setup("cpu", timeout=bad)


def test_dist_timeout_is_one_option_with_one_default_in_every_training_command(tmp_path):
    from repvit.classification import config as classification
    from repvit.dense import options as dense
    from repvit.sam import distill
    resolvers = {
        "segment": lambda **kw: dense.resolve({"data": "x", "class_names": "a,b", **kw}, "segment"),
        "detect": lambda **kw: dense.resolve({"data": "x", **kw}, "detect"),
        "train": lambda **kw: classification.resolve({"data": "x", **kw}),
        "sam distill": lambda **kw: distill.resolve({"data": "x", "teacher_random_seed": 0, **kw}),
    }
    for name, resolve in resolvers.items():
        assert resolve().dist_timeout == distributed.DEFAULT_TIMEOUT_MINUTES, name
        assert resolve(dist_timeout=90).dist_timeout == 90.0, name
        for bad in (0, -5, "never"):
            with pytest.raises(ValueError, match="--dist-timeout"):
                resolve(dist_timeout=bad)
    config = tmp_path / "c.yaml"
    config.write_text("data: x\ndist_timeout: 0\n")
    with pytest.raises(ValueError, match="minutes"):
        dense.resolve({"config": str(config)}, "detect")
    config.write_text("data: x\ndist-timeout: 2.5\n")
    assert dense.resolve({"config": str(config)}, "detect").dist_timeout == 2.5
    # The flag parses in each command's parser.
    import argparse
    for add in (lambda p: dense.add_options(p, "segment"), classification.add_options, distill.add_options):
        parser = argparse.ArgumentParser()
        add(parser)
        assert parser.parse_args(["--dist-timeout", "45"]).dist_timeout == 45.0


# --------------------------------------------------------------------------- what both sides evaluate
class OracleDetector(nn.Module):
    """Answers from the ground truth, found by the image's content: exact boxes and masks on even
    image ids, boxes shifted off target and masks mirrored on odd ones, plus one confident
    wrong-class detection per image."""

    def __init__(self, data):
        super().__init__()
        self.truth = {}
        for index in range(len(data)):
            image, target = data[index]
            self.truth[self.key(image)] = target
        self.roi_heads = nn.Module()
        self.roi_heads.has_mask = lambda: True

    @staticmethod
    def key(image: torch.Tensor) -> tuple:
        return tuple(image.shape), round(float(image.double().sum()), 3)

    def forward(self, images):
        outputs = []
        for image in images:
            target = self.truth[self.key(image)]
            boxes, labels = target["boxes"].clone(), target["labels"].clone()
            masks = target["masks"][:, None].float()
            if target["image_id"] % 2:
                boxes[:, 0::2] += (boxes[:, 2] - boxes[:, 0])[:, None] * 0.6
                masks = masks.flip(-1)
            scores = torch.linspace(0.9, 0.5, len(boxes))
            wrong = torch.cat([boxes[:1], torch.zeros(0, 4)])
            outputs.append({"boxes": torch.cat([boxes, wrong]), "labels": torch.cat([labels, labels[:1] % 3 + 1]),
                            "scores": torch.cat([scores, torch.full((len(wrong),), 0.95)]),
                            "masks": torch.cat([masks, masks[:1]])})
        return outputs


def distill_images(work: Path):
    """Five real photos, their teacher embeddings in ``work/cache`` (filled by ``fill``)."""
    from repvit.sam.distill import DistillImages
    from repvit.sam.teacher import EmbeddingCache
    paths = sorted((work / "camvid" / "val" / "images").iterdir())
    return DistillImages(paths, EmbeddingCache(work / "cache", "test-teacher", 64), 64)


def seeded(module_fn, seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return module_fn()


def evaluate_all(work: Path, env) -> dict:
    """Everything scored on ``work``'s data with ``env`` (None: one process)."""
    from repvit.detection.data import DetectionData
    from repvit.detection.detectors import build_detector
    from repvit.detection.evaluation import evaluate_detector
    from repvit.sam.distill import embedding_mse
    from repvit.segmentation.data import SemanticFolder
    from repvit.segmentation.evaluation import evaluate_segmenter
    from repvit.segmentation.semantic_fpn import SemanticFPN
    cpu = torch.device("cpu")
    out = {}
    val = SemanticFolder(work / "camvid" / "val", num_classes=len(CAMVID), ignore_index=11)
    segmenter = seeded(lambda: SemanticFPN("repvit_m0_6", num_classes=len(CAMVID), fpn_channels=32,
                                           head_channels=16))
    out["segment"] = evaluate_segmenter(segmenter, val, device=cpu, class_names=CAMVID, env=env)
    fruit = DetectionData.from_folder(need("fruit"), masks=True).subset(range(IMAGES))
    detector = seeded(lambda: build_detector("fasterrcnn", "repvit_m0_6", num_classes=4, fpn_channels=32,
                                             min_size=96, max_size=128))
    out["detect"] = evaluate_detector(detector, fruit, batch_size=BATCH, device=cpu, env=env)
    out["oracle"] = evaluate_detector(OracleDetector(fruit), fruit, batch_size=BATCH, device=cpu, env=env)
    data = distill_images(work)
    teacher = lambda: seeded(lambda: nn.Conv2d(3, 256, kernel_size=16, stride=16))   # noqa: E731
    out["fill"] = each_rank(lambda: data.cache.fill(data.paths, teacher, device=cpu, batch_size=BATCH,
                                                    rank=env.rank if env else 0,
                                                    world_size=env.world_size if env else 1), env)
    student = seeded(lambda: nn.Conv2d(3, 256, kernel_size=16, stride=16), seed=1)
    out["mse"] = embedding_mse(student, data, cpu, BATCH, env=env)
    return out


def rank_main(rank: int, world_size: int, port: int, work: str) -> None:
    """One torchrun-like rank: join through ``setup``, evaluate, record what it got."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    env = distributed.setup("cpu", timeout=TIMEOUT)
    try:
        result = evaluate_all(Path(work), env)
        group = torch.distributed.distributed_c10d._get_default_group()
        result["timeout"] = group._get_backend(torch.device("cpu")).options._timeout
        try:   # one rank failing: every rank hears of it at once instead of waiting out the timeout
            each_rank(lambda: 1 / 0 if rank == 1 else "fine", env)
        except Exception as err:   # noqa: BLE001
            result["failure"] = f"{type(err).__name__}: {err}"
        (Path(work) / f"rank{rank}.pkl").write_bytes(pickle.dumps(result))
    finally:
        distributed.teardown(env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Five CamVid val pairs at 160x120 (whole-image evaluation stays quick)."""
    from PIL import Image
    src, root = need("camvid"), tmp_path_factory.mktemp("dist-eval")
    for sub in ("images", "labels"):
        (root / "camvid" / "val" / sub).mkdir(parents=True)
    for path in sorted((src / "val" / "images").iterdir())[:IMAGES]:
        Image.open(path).resize((160, 120), Image.BILINEAR).save(root / "camvid" / "val" / "images" / path.name)
        label = src / "val" / "labels" / f"{path.stem}.png"
        Image.open(label).resize((160, 120), Image.NEAREST).save(root / "camvid" / "val" / "labels" / label.name)
    return root


@pytest.fixture(scope="module")
def ranks(work) -> list[dict]:
    import torch.multiprocessing as mp
    context = mp.spawn(rank_main, args=(2, free_port(), str(work)), nprocs=2, join=False)
    deadline = time.monotonic() + 480
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two ranks did not finish in 8 minutes")
    return [pickle.loads((work / f"rank{r}.pkl").read_bytes()) for r in range(2)]


@pytest.fixture(scope="module")
def alone(work, ranks) -> dict:
    """The same evaluation in this one process (after the ranks, so the cache is filled)."""
    from repvit.engine.timing import torch_threads
    with torch_threads(1):   # as the ranks: the same kernels, so the same bits
        return evaluate_all(work, None)


def test_ranks_joined_with_the_configured_timeout(ranks):
    assert [r["timeout"] for r in ranks] == [TIMEOUT, TIMEOUT]


def test_segmentation_confusion_matrices_sum_to_the_single_process_metrics(ranks, alone):
    assert 0 < alone["segment"]["mIoU"] < 1 and alone["segment"]["pixels"] > 0
    assert alone["segment"]["images"] == IMAGES
    for result in ranks:
        assert result["segment"] == alone["segment"]


def test_detections_gather_then_score_once_as_one_process(ranks, alone):
    oracle = alone["oracle"]
    assert 0.2 < oracle["bbox"]["AP"] < 0.9 and 0.2 < oracle["segm"]["AP"] < 0.9   # informative, not saturated
    assert alone["detect"]["detections"] > 0
    for result in ranks:
        assert result["oracle"] == oracle
        assert result["detect"] == alone["detect"]


def test_sam_cache_fill_is_shared_and_the_mse_sums_over_ranks(ranks, alone):
    # Rank 0 computed images 0, 2, 4 and rank 1 images 1, 3; the single process then found all five cached.
    assert [(s["missing"], s["reused"]) for s in ranks[0]["fill"]] == [(3, 0), (2, 0)]
    assert [(s["missing"], s["reused"]) for s in alone["fill"]] == [(0, 5)]
    assert alone["mse"] > 0
    for result in ranks:
        assert result["mse"] == pytest.approx(alone["mse"], rel=1e-12)


def test_a_failing_rank_stops_every_rank(ranks):
    assert ranks[1]["failure"].startswith("ZeroDivisionError")
    assert ranks[0]["failure"].startswith("RuntimeError: rank 1 of 2 failed (ZeroDivisionError")
