"""``repvit sam distill`` at toy size on real photos: a whole-SAM file scored as logged, the teacher
cache (reuse and invalidation), exact resume after SIGKILL and after SIGTERM mid-epoch, two torchrun
ranks sharing the cache fill, the teacher at sizes other than 1024, and bad input named."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("segment_anything", reason="RepViT-SAM needs Meta's segment-anything (pip install "
                                               "'repvit-pytorch[sam]')")

from repvit.cli import main
from repvit.sam import teacher as teachers
from repvit.sam.distill import DistillImages, build_student, embedding_mse, split
from repvit.sam.teacher import EmbeddingCache, build_teacher, fit_to_size, list_images

from .test_dense_data import need
from .test_dense_train import assert_identical, assert_weights_moved, run, state, terminate_after_first_step

REPO = Path(__file__).resolve().parents[1]
# 8 photos, 2 held out: 3 steps of 2 per epoch; 64 px inputs give 4x4 embeddings.
ARGS = ["--teacher", "vit_b", "--teacher-random-seed", "0", "--img-size", "64", "--model", "repvit_m0_6",
        "--epochs", "2", "--batch-size", "2", "--warmup-iters", "2", "--workers", "0", "--threads", "1",
        "--log-interval", "1", "--seed", "3", "--val-fraction", "0.25"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """5 Imagenette photos (96 px) and 3 COCO photos (640 px), in two sub-folders."""
    root = tmp_path_factory.mktemp("photos")
    for source, sub, count in ((need("imagenette-96") / "val" / "n02102040", "imagenette", 5),
                               (need("coco128-instances") / "images" / "val2017", "coco", 3)):
        (root / sub).mkdir()
        for path in sorted(source.iterdir())[:count]:
            shutil.copy2(path, root / sub / path.name)
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("teacher-cache")


def distill_cmd(photos: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "repvit", "sam", "distill", "--data", str(photos), "--output", str(out),
            "--teacher-cache", str(cache), *ARGS, *extra]


@pytest.fixture(scope="module")
def reference(photos, cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("distill-ref")
    result = run(distill_cmd(photos, out, cache))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_run_caches_the_teacher_and_saves_the_sam_it_scored(reference, photos, cache):
    for name in ("last.pth", "best.pth", "metrics.csv", "metrics.jsonl", "curves.png", "train.log"):
        assert (reference / name).is_file(), name
    log = (reference / "train.log").read_text()
    assert "teacher embeddings: 8 computed" in log and "0 reused" in log and "RANDOM weights (seed 0" in log
    assert "prompt encoder and mask decoder are RANDOM" in log and "before training: val mse" in log
    rows = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2] and all(r["val_mse"] > 0 for r in rows)
    record = torch.load(reference / "best.pth", weights_only=True)
    assert record["teacher_random"] is True and record["teacher"].startswith("vit_b:random-seed-0")
    # best.pth is a whole-SAM file, and its encoder scores the held-out MSE the run logged for it.
    from repvit.models.reparam import reparameterize
    from repvit.sam import build_sam
    sam = build_sam(reference / "best.pth", variant="repvit_m0_6", img_size=64)
    _, val = split(list_images(photos), 0.25, 3)
    targets = EmbeddingCache(cache, record["teacher"], 64)
    mse = embedding_mse(reparameterize(sam.image_encoder), DistillImages(val, targets, 64), torch.device("cpu"), 2)
    assert mse == pytest.approx(min(r["val_mse"] for r in rows[1:]), rel=1e-5)   # epoch 0 is the start


def test_distillation_learns(photos, cache, tmp_path):
    # 6 epochs of 3 steps must bring the held-out embedding MSE well below that of the initial weights
    # (epoch 0); it starts near 2, what two unrelated unit-variance embeddings give.
    out = tmp_path / "learn"
    result = run(distill_cmd(photos, out, cache, "--epochs", "6", "--lr", "3e-3", "--schedule", "none"))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["epoch"] == 0 and rows[-1]["val_mse"] < 0.75 * rows[0]["val_mse"], [r["val_mse"] for r in rows]


def test_resume_after_sigkill_is_exact_and_reuses_the_cache(reference, photos, cache, tmp_path):
    out = tmp_path / "killed"
    killed = run(distill_cmd(photos, out, cache, "--stop-after-epoch", "1"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert "teacher embeddings: 0 computed" in (out / "train.log").read_text() and "8 reused" in \
        (out / "train.log").read_text()
    after_epoch_1 = state(out / "last.pth")["model"]
    resumed = run(distill_cmd(photos, out, cache, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in (out / "train.log").read_text()
    assert_identical(state(out / "last.pth"), state(reference / "last.pth"))
    # the encoder trains; the prompt encoder and mask decoder are frozen passengers
    assert_weights_moved(after_epoch_1, state(out / "last.pth")["model"], prefix="image_encoder.")


def test_sigterm_mid_epoch_saves_and_resumes_exactly(reference, photos, cache, tmp_path):
    out = tmp_path / "term"
    terminate_after_first_step(distill_cmd(photos, out, cache), out)
    mid_epoch = state(out / "last.pth")["model"]
    resumed = run(distill_cmd(photos, out, cache, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_identical(state(out / "last.pth"), state(reference / "last.pth"))
    assert_weights_moved(mid_epoch, state(out / "last.pth")["model"], prefix="image_encoder.")


def test_two_torchrun_ranks_share_the_cache_fill(photos, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "repvit",
           "sam", "distill", "--data", str(photos), "--output", str(out), *ARGS, "--epochs", "1"]
    result = run(cmd)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (out / "train.log").read_text()
    assert "world size 2" in log and "teacher embeddings: 8 computed" in log and "2 steps per epoch" in log
    assert len(list((out / "teacher-cache").rglob("*.pt"))) == 8
    raw = torch.load(out / "last.pth", weights_only=True)
    assert raw["epoch"] == 1 and len(raw["rng"]) == 2 and not any("module." in k for k in raw["model"])


class CountingTeacher(nn.Module):
    """A stand-in teacher (stride-16 conv) that counts how often it is built."""
    built = 0

    def __init__(self):
        super().__init__()
        CountingTeacher.built += 1
        self.conv = nn.Conv2d(3, 256, 16, stride=16)

    def forward(self, x):
        return self.conv(x)


def test_cache_reuses_and_invalidates(photos, tmp_path):
    images = list_images(photos)
    assert len(images) == 8 and len(list_images(photos, max_images=4)) == 4
    assert {p.parent.name for p in list_images(photos, max_images=2)} == {"coco", "imagenette"}   # spread
    cache = EmbeddingCache(tmp_path / "c", "vit_b:random-seed-0", 64)
    CountingTeacher.built = 0
    first = cache.fill(images, CountingTeacher, device=torch.device("cpu"), batch_size=3)
    assert (first["missing"], first["reused"], CountingTeacher.built) == (8, 0, 1)
    again = cache.fill(images, CountingTeacher, device=torch.device("cpu"), batch_size=3)
    assert (again["missing"], again["reused"], CountingTeacher.built) == (0, 8, 1)      # the teacher is not built
    assert cache.load(images[0]).shape == (256, 4, 4)
    for other in (EmbeddingCache(tmp_path / "c", "vit_b:random-seed-1", 64),             # another teacher
                  EmbeddingCache(tmp_path / "c", "vit_b:random-seed-0", 128),            # another size
                  EmbeddingCache(tmp_path / "c", "vit_b:random-seed-0", 64, "float16")):
        assert not any(other.has(p) for p in images)
    changed = images[0]
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))   # the image changed
    assert not cache.has(changed) and cache.has(images[1])
    # Sharded over two ranks: each computes its half, whatever the other has written already.
    shard = EmbeddingCache(tmp_path / "s", "t", 64)
    halves = [shard.fill(images, CountingTeacher, device=torch.device("cpu"), batch_size=8, rank=r, world_size=2)
              for r in (0, 1)]
    assert [h["missing"] for h in halves] == [4, 4] and all(shard.has(p) for p in images)


def test_teacher_tables_follow_the_input_size(monkeypatch, tmp_path):
    from segment_anything.modeling.image_encoder import get_rel_pos
    small = teachers.ViTSpec(embed_dim=32, depth=2, num_heads=2, global_blocks=(1,))
    monkeypatch.setitem(teachers.TEACHERS, "vit_b", small)
    torch.manual_seed(0)
    full = build_teacher("vit_b", img_size=1024, seed=5)
    with torch.no_grad():
        full.pos_embed.normal_()
        for p in full.blocks[1].attn.parameters():
            p.normal_()
    state = {f"image_encoder.{k}": v for k, v in full.state_dict().items()}
    state["mask_decoder.iou_token.weight"] = torch.zeros(4, 256)          # a whole-SAM file, as Meta ships
    path = tmp_path / "sam_tiny.pth"
    torch.save(state, path)
    same = fit_to_size(full.state_dict(), 1024, small)
    assert all(torch.equal(same[k], v) for k, v in full.state_dict().items())       # nothing to do at 1024
    teacher = build_teacher("vit_b", img_size=64, checkpoint=path)
    assert teacher(torch.randn(1, 3, 64, 64)).shape == (1, 256, 4, 4)
    assert teacher.pos_embed.shape == (1, 4, 4, 32)
    # The global block's relative table is resampled as segment-anything resamples it at run time.
    big = full.blocks[1].attn.rel_pos_h
    assert teacher.blocks[1].attn.rel_pos_h.shape == (7, 16) and teacher.blocks[0].attn.rel_pos_h.shape == (27, 16)
    assert torch.allclose(get_rel_pos(4, 4, big.detach()), get_rel_pos(4, 4, teacher.blocks[1].attn.rel_pos_h))
    # The seed alone decides a random teacher, and building one leaves the global random stream alone.
    before = torch.get_rng_state()
    a, b = build_teacher("vit_b", img_size=64, seed=5), build_teacher("vit_b", img_size=64, seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    monkeypatch.setitem(teachers.TEACHERS, "vit_l", teachers.ViTSpec(embed_dim=48, depth=2, num_heads=2,
                                                                     global_blocks=(1,)))
    with pytest.raises(ValueError, match="pass --teacher vit_b"):
        build_teacher("vit_l", img_size=64, checkpoint=path)


def test_decoder_from_a_sam_file(reference):
    cfg = argparse.Namespace(model="repvit_m0_6", img_size=64, student_init=None, pretrained=False,
                             decoder_from=str(reference / "best.pth"))
    student, init, decoder = build_student(cfg)
    saved = torch.load(reference / "best.pth", weights_only=True)["model"]
    assert init == "random initialisation" and "from" in decoder
    assert all(torch.equal(v, saved[f"mask_decoder.{k}"]) for k, v in student.mask_decoder.state_dict().items())


def test_cosine_schedule():
    from repvit.engine.optim import lr_factor
    f = lambda step: lr_factor(step, total=100, warmup=0, schedule="cosine", power=0.9, milestones=[],  # noqa: E731
                               steps_per_epoch=10)
    assert f(0) == 1.0 and f(50) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)


@pytest.mark.parametrize("extra, message", [
    (["--teacher-checkpoint", "/nonexistent/sam_vit_b.pth"], "sam_vit_b_01ec64.pth"),
    (["--teacher-random-seed", "0", "--img-size", "100"], "multiple of 16"),
    ([], "name the teacher"),
    (["--teacher-random-seed", "0", "--teacher-checkpoint", "x.pth"], "exactly one"),
    (["--teacher-random-seed", "0", "--student-init", "/nonexistent.pth"], "--student-init"),
])
def test_bad_options_are_named(photos, tmp_path, capsys, extra, message):
    assert main(["sam", "distill", "--data", str(photos), "--output", str(tmp_path / "o"), "--teacher", "vit_b",
                 *extra]) == 2
    assert message in capsys.readouterr().err


def test_empty_folder_is_named(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("no photos here")
    assert main(["sam", "distill", "--data", str(tmp_path / "empty"), "--output", str(tmp_path / "o"),
                 "--teacher-random-seed", "0", "--img-size", "64", "--threads", "1"]) == 2
    assert "no images" in capsys.readouterr().err


def test_config_files_and_a_teacher_flag_replacing_the_files(tmp_path):
    from repvit.sam.distill import resolve
    weights = tmp_path / "sam_vit_b.pth"
    weights.write_bytes(b"stand-in")            # validation checks only that the files exist
    cpu = resolve({"config": str(REPO / "configs" / "sam-distill-cpu.yaml")})
    assert (cpu.teacher, cpu.teacher_random_seed, cpu.img_size, cpu.model) == ("vit_b", 0, 160, "repvit_m2_3")
    real = resolve({"config": str(REPO / "configs" / "sam-distill-cpu.yaml"), "teacher_checkpoint": str(weights)})
    assert real.teacher_random_seed is None and real.teacher_checkpoint == str(weights)
    vit_h = resolve({"config": str(REPO / "configs" / "sam-distill-vit-h.yaml"), "teacher_checkpoint": str(weights),
                     "decoder_from": str(weights)})
    assert (vit_h.teacher, vit_h.img_size, vit_h.pretrained, vit_h.cache_dtype) == ("vit_h", 1024, "repvit_m2_3", "float16")
    with pytest.raises(FileNotFoundError, match="sam_vit_h_4b8939.pth"):
        resolve({"config": str(REPO / "configs" / "sam-distill-vit-h.yaml")})   # the weights are not here
