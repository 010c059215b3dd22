"""``repvit train`` in one process on real images: outputs, self-describing checkpoints, options
and config files, fine-tuning, distillation, and the errors a user meets (data, divergence)."""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import repvit
from repvit.cli import main as cli
from repvit.classification import config as train_config
from repvit.classification.data import scan_class_folders, split_folder
from repvit.classification.distill import DistillationLoss, build_teacher
from repvit.classification.optim import build_optimizer, build_scheduler

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# A tiny model at 32 px keeps each run to a few seconds; everything else is the paper's recipe
# (RandAugment, random erasing, repeated augmentation, Mixup/CutMix, EMA, AGC).
TINY = ["--model", "repvit_m0_6", "--img-size", "32", "--batch-size", "16", "--epochs", "1", "--warmup-epochs", "0",
        "--workers", "0", "--lr", "1e-3", "--no-tensorboard", "--log-interval", "2", "--threads", "1"]


def copy_subset(src: Path, dst: Path, classes: int, train: int, val: int) -> Path:
    for split, count in (("train", train), ("val", val)):
        for folder in sorted((src / split).iterdir())[:classes]:
            (dst / split / folder.name).mkdir(parents=True, exist_ok=True)
            for image in sorted(folder.iterdir())[:count]:
                shutil.copyfile(image, dst / split / folder.name / image.name)
    return dst


@pytest.fixture(scope="module")
def trained(tiny_imagenette, tmp_path_factory):
    """One finished run of the tiny recipe, shared by the tests that only read its outputs."""
    out = tmp_path_factory.mktemp("run") / "out"
    threads = torch.get_num_threads()
    rc = cli(["train", "--data", str(tiny_imagenette), "--output", str(out), *TINY])
    assert rc == 0
    assert torch.get_num_threads() == threads  # --threads 1 applied to the run only
    return out


# --------------------------------------------------------------------------- a complete run
def test_run_writes_checkpoints_logs_and_curves(trained):
    for name in ("last.pth", "best.pth", "config.yaml", "metrics.csv", "metrics.jsonl", "steps.csv", "curves.png",
                 "train.log"):
        assert (trained / name).is_file(), name
    steps = list(csv.DictReader((trained / "steps.csv").open()))
    updates = [int(r["update"]) for r in steps]
    assert updates and updates == sorted(updates) and all(u % 2 == 0 for u in updates)  # --log-interval 2
    assert all(0 < float(r["epoch"]) <= 1 and math.isfinite(float(r["train_loss"])) for r in steps)
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]
    row = rows[0]
    assert row["val_images"] == 40 and 0 <= row["val_top1"] <= row["val_top5"] <= 100
    assert torch.isfinite(torch.tensor(row["train_loss"])) and "val_top1_ema" in row
    assert (trained / "metrics.csv").read_text().splitlines()[0].startswith("epoch,train_loss")
    assert (trained / "curves.png").read_bytes()[:4] == b"\x89PNG"
    log = (trained / "train.log").read_text()
    assert "world size 1" in log and "global batch 16" in log and "effective lr 0.001" in log


def test_training_learns(tiny_imagenette, tmp_path):
    # 4 classes of 8 images, augmentation off: 6 epochs must take the training loss far below its first
    # epoch's (an optimizer that does nothing stays at ln 4). The validation top-1 of a run this short
    # stays near chance in eval mode (BatchNorm's running statistics lag the weights), so the training
    # loss is the measure here; the Imagenette recipe's recorded figures cover accuracy.
    data = copy_subset(tiny_imagenette, tmp_path / "data", classes=4, train=8, val=2)
    out = tmp_path / "learn"
    assert cli(["train", "--data", str(data), "--output", str(out), *TINY, "--epochs", "6", "--batch-size", "8",
                "--lr", "2e-3", "--aa", "none", "--reprob", "0", "--mixup", "0", "--cutmix", "0", "--aug-repeats",
                "0", "--smoothing", "0", "--scale", "1", "1", "--hflip", "0", "--drop-path", "0",
                "--no-model-ema"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train_loss"] > 1.0 and rows[-1]["train_loss"] < 0.4 * rows[0]["train_loss"], \
        [r["train_loss"] for r in rows]


def test_checkpoints_are_self_describing(trained, tiny_imagenette):
    raw = torch.load(trained / "last.pth", map_location="cpu", weights_only=True)
    assert raw["epoch"] == 1 and raw["img_size"] == 32 and raw["config"]["model"] == "repvit_m0_6"
    for key in ("optimizer", "scheduler", "rng", "model_ema", "num_updates"):
        assert key in raw, key
    expected = sorted(p.name for p in (tiny_imagenette / "train").iterdir())
    for name in ("last.pth", "best.pth"):
        model = repvit.create_model(checkpoint=trained / name)  # no flags: everything comes from the file
        assert model.variant.name == "repvit_m0_6" and model.num_classes == 10
        assert model.class_names == expected
        assert tuple(model.preprocessing["input_size"]) == (3, 32, 32)
        assert model.preprocessing["crop_pct"] == 0.875 and model.preprocessing["interpolation"] == "bicubic"


def test_refuses_to_overwrite_a_run(trained, tiny_imagenette, capsys):
    assert cli(["train", "--data", str(tiny_imagenette), "--output", str(trained), *TINY]) == 2
    assert "already holds a run" in capsys.readouterr().err


# --------------------------------------------------------------------------- options and configs
def test_config_file_flags_override_and_resolved_config_is_saved(tiny_imagenette, tmp_path):
    cfg_file = tmp_path / "my.yaml"
    cfg_file.write_text(yaml.safe_dump({"model": "repvit_m0_6", "lr": "2e-3", "batch-size": 8, "smoothing": 0.2,
                                        "aa": "none", "model_ema": False}))
    out = tmp_path / "out"
    rc = cli(["train", "-c", str(cfg_file), "--data", str(tiny_imagenette), "--output", str(out), *TINY[2:],
              "--batch-size", "16", "--tensorboard"])
    assert rc == 0
    try:
        import tensorboard  # noqa: F401  (optional)
        assert any((out / "tensorboard").iterdir())
    except ImportError:
        assert not (out / "tensorboard").exists()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["batch_size"] == 16          # flag beats the file
    assert saved["lr"] == 1e-3                # TINY's --lr beats the file's 2e-3
    assert saved["smoothing"] == 0.2 and saved["aa"] == "none" and saved["model_ema"] is False  # from the file
    assert saved["weight_decay"] == 0.025 and saved["mixup"] == 0.8  # the paper's defaults
    assert "val_top1_ema" not in json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    # The saved file is itself a valid config that reproduces the options.
    again = train_config.parse_args(["-c", str(out / "config.yaml")])
    assert train_config.dump(again) == {**saved, "config": str(out / "config.yaml")}


def test_config_file_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 0.1\n")
    with pytest.raises(ValueError, match="unknown option 'learning_rate'"):
        train_config.parse_args(["-c", str(bad), "--data", "x"])
    bad.write_text("epochs: many\n")
    with pytest.raises(ValueError, match="option epochs: expected an integer"):
        train_config.parse_args(["-c", str(bad), "--data", "x"])
    with pytest.raises(ValueError, match="--data is required"):
        train_config.parse_args([])
    with pytest.raises(ValueError, match="--batch-size must be even"):
        train_config.parse_args(["--data", "x", "--batch-size", "15"])
    assert train_config.parse_args(["--data", "x", "--batch-size", "15", "--mixup", "0", "--cutmix", "0"])


def test_no_weight_decay_on_norms_and_biases_and_lr_steps_per_iteration():
    model = repvit.create_model("repvit_m0_6", num_classes=10)
    cfg = train_config.parse_args(["--data", "x", "--epochs", "4", "--warmup-epochs", "1"])
    opt = build_optimizer(model, cfg, lr=1e-3)
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        expected = 0.0 if p.ndim <= 1 or name.endswith(".bias") else 0.025
        assert decay_of[id(p)] == expected, name
    assert any(v == 0.025 for v in decay_of.values())
    sched = build_scheduler(opt, cfg, steps_per_epoch=10)
    lrs = []
    for update in range(1, 41):
        sched.step_update(num_updates=update)
        lrs.append(opt.param_groups[0]["lr"])
    # Linear warm-up over the first 10 updates, then timm's cosine over all 40 (as in the official
    # script, the cosine is not shifted by the warm-up), both stepped per update, not per epoch.
    for t in range(1, 10):
        assert lrs[t - 1] == pytest.approx(cfg.warmup_lr + t * (1e-3 - cfg.warmup_lr) / 10)
    for t in range(10, 41):
        cosine = cfg.min_lr + 0.5 * (1e-3 - cfg.min_lr) * (1 + math.cos(math.pi * t / 40))
        assert lrs[t - 1] == pytest.approx(cosine)


# --------------------------------------------------------------------------- data problems
def test_wrong_layout_and_empty_class_are_named(tiny_imagenette, tmp_path, capsys):
    with pytest.raises(ValueError, match="has no train/ folder"):
        split_folder(tmp_path, "train")
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copyfile(next((tiny_imagenette / "val").rglob("*.JPEG")), loose / "a.JPEG")
    with pytest.raises(ValueError, match="1 images but no class folders"):
        scan_class_folders(loose)
    data = copy_subset(tiny_imagenette, tmp_path / "data", classes=2, train=8, val=2)
    (data / "train" / "zzz_empty").mkdir()
    assert cli(["train", "--data", str(data), "--output", str(tmp_path / "o"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "zzz_empty" in err and "holds no images" in err


def test_corrupt_image_names_the_file_or_is_skipped(tiny_imagenette, tmp_path, capsys):
    # In this process with no loader workers: forking workers from a test process that has loaded
    # every library of the suite (OpenVINO's and FFmpeg's thread pools among them) crashed the parent
    # at the end of a full run; worker processes are tested from a fresh process below.
    data = copy_subset(tiny_imagenette, tmp_path / "data", classes=2, train=16, val=2)
    victim = sorted((data / "train").rglob("*.JPEG"))[3]
    victim.write_bytes(victim.read_bytes()[:300])  # truncated JPEG
    args = ["train", "--data", str(data), *TINY, "--workers", "0", "--aug-repeats", "0"]
    assert cli([*args, "--output", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert str(victim) in err and "--skip-bad" in err and "Traceback" not in err
    assert cli([*args, "--output", str(tmp_path / "b"), "--skip-bad", "--batch-size", "8"]) == 0
    assert "skipped 1 unreadable images" in (tmp_path / "b" / "train.log").read_text()


def test_a_failing_loader_worker_does_not_keep_the_process_alive(tiny_imagenette, tmp_path):
    # A step that raises (here: a truncated image read in a loader worker) must end the workers with
    # it; a leftover worker keeps the interpreter waiting at exit, so the command would never return.
    import os
    import subprocess
    import sys
    data = copy_subset(tiny_imagenette, tmp_path / "data", classes=2, train=16, val=2)
    victim = sorted((data / "train").rglob("*.JPEG"))[3]
    victim.write_bytes(victim.read_bytes()[:300])
    cmd = [sys.executable, "-m", "repvit", "train", "--data", str(data), *TINY, "--workers", "1", "--aug-repeats",
           "0", "--output", str(tmp_path / "out")]
    env = {**os.environ, "PYTHONPATH": str(REPO_CONFIGS.parent), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and str(victim) in done.stderr, done.stderr[-2000:]
    assert "--skip-bad" in done.stderr and "Traceback" not in done.stderr
    skip = cmd[:-1] + [str(tmp_path / "skipped"), "--skip-bad", "--batch-size", "8"]
    done = subprocess.run(skip, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipped 1 unreadable images" in (tmp_path / "skipped" / "train.log").read_text()


def test_non_finite_loss_stops_naming_the_step(tiny_imagenette, tmp_path, capsys):
    # A learning rate this large overflows the weights on the first update: a real divergence.
    rc = cli(["train", "--data", str(tiny_imagenette), "--output", str(tmp_path / "o"), *TINY, "--lr", "1e38",
              "--opt", "sgd", "--clip-grad", "0", "--no-model-ema"])
    assert rc == 3
    err = capsys.readouterr().err
    assert "loss is" in err and "at epoch 1 step" in err and "Lower --lr" in err


# --------------------------------------------------------------------------- fine-tuning, distillation
def test_finetune_onto_fewer_classes_replaces_the_head(trained, tiny_imagenette, tmp_path, capsys):
    data = copy_subset(tiny_imagenette, tmp_path / "data5", classes=5, train=8, val=2)
    out = tmp_path / "ft"
    rc = cli(["train", "--data", str(data), "--output", str(out), *TINY[2:], "--finetune",
              str(trained / "last.pth"), "--no-model-ema"])
    assert rc == 0
    assert "has 10 classifier classes and the data has 5" in (out / "train.log").read_text()
    model = repvit.create_model(checkpoint=out / "last.pth")
    assert model.variant.name == "repvit_m0_6" and model.num_classes == 5 and not model.distillation
    # The backbone started from the source weights: the stem moved only by a few small steps.
    source = repvit.create_model(checkpoint=trained / "last.pth").features[0][0].c.weight
    tuned = model.features[0][0].c.weight
    fresh = repvit.create_model("repvit_m0_6", num_classes=5).features[0][0].c.weight
    assert (tuned - source).abs().mean() < (fresh - source).abs().mean() / 10


def test_finetune_with_same_classes_keeps_the_head_and_refuses_fused(trained, tiny_imagenette, tmp_path, capsys):
    out = tmp_path / "ft"
    assert cli(["train", "--data", str(tiny_imagenette), "--output", str(out), *TINY, "--finetune",
                str(trained / "best.pth"), "--lr", "1e-9", "--schedule", "none", "--no-model-ema"]) == 0
    assert "loaded backbone and the 10-class classifier" in (out / "train.log").read_text()
    before = repvit.create_model(checkpoint=trained / "best.pth").classifier.classifier.l.weight
    after = repvit.create_model(checkpoint=out / "last.pth").classifier.classifier.l.weight
    assert torch.allclose(before, after, atol=1e-5)
    fused = repvit.reparameterize(repvit.create_model(checkpoint=trained / "best.pth"))
    repvit.save_checkpoint(fused, tmp_path / "fused.pth")
    assert cli(["train", "--data", str(tiny_imagenette), "--output", str(tmp_path / "x"), *TINY,
                "--finetune", str(tmp_path / "fused.pth")]) == 2
    assert "fused" in capsys.readouterr().err


def test_hard_distillation_from_our_checkpoint(trained, tiny_imagenette, tmp_path):
    out = tmp_path / "kd"
    assert cli(["train", "--data", str(tiny_imagenette), "--output", str(out), *TINY,
                "--teacher", str(trained / "best.pth"), "--no-model-ema", "--channels-last"]) == 0
    # (distillation "auto" becomes hard when a teacher is given)
    assert "distillation hard" in (out / "train.log").read_text()
    student = repvit.create_model(checkpoint=out / "last.pth")
    assert student.distillation  # trained with the second head; eval returns the mean of both


def test_distillation_loss_matches_its_definition():
    torch.manual_seed(0)
    teacher = torch.nn.Linear(6, 4)
    images = torch.randn(8, 6)
    cls, dist = torch.randn(8, 4, requires_grad=True), torch.randn(8, 4, requires_grad=True)
    soft_targets = torch.softmax(torch.randn(8, 4), dim=1)  # mixed labels
    base = lambda logits, t: torch.sum(-t * torch.log_softmax(logits, dim=1), dim=1).mean()  # noqa: E731
    hard = DistillationLoss(base, teacher, "hard", alpha=0.5)((images), (cls, dist), soft_targets)
    expected = 0.5 * base(cls, soft_targets) + 0.5 * torch.nn.functional.cross_entropy(
        dist, teacher(images).argmax(1))
    assert torch.allclose(hard, expected)
    soft = DistillationLoss(base, teacher, "soft", alpha=0.3, tau=2.0)(images, (cls, dist), soft_targets)
    p_t = torch.softmax(teacher(images) / 2, dim=1)
    kl = (p_t * (p_t.log() - torch.log_softmax(dist / 2, dim=1))).sum(1).mean() * 4
    assert torch.allclose(soft, 0.7 * base(cls, soft_targets) + 0.3 * kl, atol=1e-6)
    hard.backward()
    assert teacher.weight.grad is None and dist.grad is not None


def test_teacher_from_timm_name_and_checkpoint(tmp_path):
    import timm
    source = timm.create_model("resnet10t", num_classes=10)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "teacher.pth")
    teacher = build_teacher("resnet10t", str(tmp_path / "teacher.pth"), num_classes=10)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(teacher(x), source.eval()(x))
    with pytest.raises(ValueError, match="--teacher-checkpoint PATH"):
        build_teacher("resnet10t", None, num_classes=10)
    with pytest.raises(ValueError, match="does not fit the resnet10t"):
        build_teacher("resnet10t", str(tmp_path / "teacher.pth"), num_classes=5)


# --------------------------------------------------------------------------- feedback
def test_progress_bar_on_a_terminal_and_plain_lines_otherwise(tmp_path):
    import io
    from repvit.engine.progress import Reporter
    plain_out = io.StringIO()
    plain = Reporter(interval=2, stream=plain_out, bar_stream=io.StringIO(), log_file=tmp_path / "log.txt")
    assert not plain.tty
    plain.start_epoch(0, 3, total_steps=5)
    for step in range(5):
        plain.step(step, loss=1.5, lr=1e-3, batch_images=16)
    plain.end_epoch()
    lines = plain_out.getvalue().splitlines()
    assert [line.split(" loss")[0] for line in lines] == ["epoch 1/3 step 2/5", "epoch 1/3 step 4/5",
                                                          "epoch 1/3 step 5/5"]
    assert all("lr 1.000e-03" in line and "img/s" in line and "eta" in line for line in lines)
    assert (tmp_path / "log.txt").read_text().splitlines() == lines
    bar_out, log_out = io.StringIO(), io.StringIO()
    bar = Reporter(interval=2, stream=log_out, bar_stream=bar_out, tty=True)
    bar.start_epoch(1, 3, total_steps=4)
    for step in range(4):
        bar.step(step, loss=0.25, lr=2e-4, batch_images=8)
    bar.end_epoch()
    drawn = bar_out.getvalue()
    assert "epoch 2/3" in drawn and "4/4" in drawn and "loss 0.2500" in drawn and "img/s" in drawn
    assert log_out.getvalue() == ""  # the bar replaces the periodic lines


def test_distillation_is_hard_with_a_teacher_and_off_when_fine_tuning_unless_asked(trained):
    from repvit.classification.task import resolve_distillation
    teacher = str(trained / "best.pth")

    def kind(*flags):
        return resolve_distillation(train_config.parse_args(["--data", "x", *flags]))
    assert kind() == "none"                                             # paper default, but no teacher weights
    assert kind("--teacher-checkpoint", teacher) == "hard"              # the paper's recipe
    assert kind("--teacher", teacher) == "hard"                         # one of our checkpoints
    assert kind("--teacher", teacher, "--finetune", teacher) == "none"  # fine-tuning: off ...
    assert kind("--teacher", teacher, "--finetune", teacher, "--distillation-type", "soft") == "soft"  # ... unless asked


@pytest.mark.parametrize("name", ["imagenet-repvit.yaml", "imagenette-cpu.yaml"])
def test_shipped_configs_load_and_validate(name):
    cfg = train_config.parse_args(["-c", str(REPO_CONFIGS / name), "--data", "x"])
    assert cfg.model.startswith("repvit_") and cfg.epochs > 0 and cfg.config.endswith(name)
    if name == "imagenet-repvit.yaml":  # the paper's recipe, item by item from the table
        assert (cfg.opt, cfg.weight_decay, cfg.opt_eps, cfg.warmup_epochs, cfg.warmup_lr, cfg.min_lr) == \
            ("adamw", 0.025, 1e-8, 5, 1e-6, 1e-5)
        assert (cfg.clip_grad, cfg.clip_mode, cfg.aa, cfg.reprob, cfg.aug_repeats) == \
            (0.02, "agc", "rand-m9-mstd0.5-inc1", 0.25, 3)
        assert (cfg.mixup, cfg.cutmix, cfg.smoothing, cfg.model_ema_decay) == (0.8, 1.0, 0.1, 0.99996)


def test_step_log_survives_a_resume_from_an_older_checkpoint(tmp_path):
    from repvit.engine.metrics_log import MetricsLog
    log = MetricsLog(tmp_path, tensorboard=False)
    for update in (2, 4, 6, 8):
        log.add_step(update, loss=1.0 / update, lr=1e-3, epoch=update / 8)
    log.add({"epoch": 1, "train_loss": 0.5, "val_loss": 0.6, "val_top1": 50.0, "lr": 1e-3})
    with open(tmp_path / "steps.csv", "a") as f:
        f.write("10,1.2")  # a kill in the middle of a write
    resumed = MetricsLog(tmp_path, tensorboard=False, resume=True)  # last.pth was written at update 4
    resumed.add_step(6, loss=0.3, lr=1e-3, epoch=0.75)
    rows = list(csv.DictReader((tmp_path / "steps.csv").open()))
    assert [int(r["update"]) for r in rows] == [2, 4, 6] and float(rows[-1]["train_loss"]) == 0.3
    with open(tmp_path / "steps.csv", "a") as f:
        f.write("1")  # cut off again, this time before any newer step is logged
    appended = MetricsLog(tmp_path, tensorboard=False, resume=True)
    appended.add_step(12, loss=0.2, lr=1e-3, epoch=1.5)
    rows = list(csv.DictReader((tmp_path / "steps.csv").open()))
    assert [int(r["update"]) for r in rows] == [2, 4, 6, 12] and all(None not in r for r in rows)
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    MetricsLog(tmp_path, tensorboard=False)  # a fresh run starts a fresh log
    assert not (tmp_path / "steps.csv").exists()


# --------------------------------------------------------------------------- defaults fitted to the run
def test_a_short_run_gets_a_fitted_warm_up_and_says_so(tmp_path):
    cfg = train_config.parse_args(["--data", "x", "--epochs", "3"])   # the paper's 5 warm-up epochs won't fit
    assert cfg.warmup_epochs == pytest.approx(0.3) and "warm-up 0.3 epochs" in cfg._notes[0]
    assert "_notes" not in train_config.dump(cfg)
    assert train_config.parse_args(["--data", "x"]).warmup_epochs == 5          # the paper's run is untouched
    assert train_config.parse_args(["--data", "x", "--epochs", "3", "--warmup-epochs", "1"]).warmup_epochs == 1
    with pytest.raises(ValueError, match="must be fewer than --epochs"):    # an explicit impossible value stays an error
        train_config.parse_args(["--data", "x", "--epochs", "3", "--warmup-epochs", "5"])
    config = tmp_path / "c.yaml"
    config.write_text("warmup_epochs: 4\nepochs: 3\n")
    with pytest.raises(ValueError, match="must be fewer"):                  # a config file's value is explicit too
        train_config.parse_args(["--data", "x", "-c", str(config)])


def test_cli_short_run_logs_the_fitted_warm_up(tiny_imagenette, tmp_path):
    at = TINY.index("--warmup-epochs")
    args = TINY[:at] + TINY[at + 2:]
    out = tmp_path / "out"
    assert cli(["train", "--data", str(tiny_imagenette), "--output", str(out), *args]) == 0
    assert "warm-up 0.1 epochs" in (out / "train.log").read_text()


def test_threads_auto_takes_the_idle_cores(monkeypatch):
    from repvit.runtime import timing
    monkeypatch.setattr(timing, "usable_cores", lambda: 2)
    assert timing.auto_threads(idle=1.97)[0] == 2      # an idle 2-core machine: both cores
    assert timing.auto_threads(idle=1.1)[0] == 1       # another job holds a core: stay off it
    assert timing.auto_threads(idle=0.2)[0] == 1       # always at least one
    assert timing.auto_threads(2, idle=2.0)[0] == 1    # two processes share the idle cores
    assert "2.0 of 2 cores idle" in timing.auto_threads(idle=2.0)[1]
    assert 0.0 <= timing.idle_cores(0.05) <= (timing.os.cpu_count() or 1) + 1e-6
    assert timing.threads_option("auto") == "auto" and timing.threads_option("3") == 3
    for bad in ("0", "-1", "two", 1.5):
        with pytest.raises(ValueError, match="count of 1 or more"):
            timing.threads_option(bad)
    assert train_config.parse_args(["--data", "x"]).threads == "auto"
    with pytest.raises(SystemExit):
        train_config.parse_args(["--data", "x", "--threads", "0"])


def test_the_imagenette_recipe_uses_the_idle_cores():
    cfg = train_config.parse_args(["-c", str(REPO_CONFIGS / "imagenette-cpu.yaml")])
    assert cfg.threads == "auto"
