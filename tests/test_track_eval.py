"""``repvit track eval``: the DAVIS protocol on real annotated frames (the first frames of a shared DAVIS 2016
sequence, in a DAVIS-layout folder made here), streamed, scored as the official evaluator scores, equal to
sam2's whole-video predictor's score on the same frames; reruns skip complete sequences and a run that
breaks leaves nothing under a final name."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("sam2", reason="EdgeTAM needs the edgetam extra (Meta's sam2)")

from repvit.cli import main  # noqa: E402
from repvit.data.davis import read_annotation, write_annotation  # noqa: E402
from repvit.edgetam import build_video_predictor  # noqa: E402
from repvit.edgetam.evaluation import evaluate_predictions  # noqa: E402
from repvit.edgetam.streaming import StepResult  # noqa: E402
from repvit.edgetam.vos import index_mask  # noqa: E402

from .conftest import shared_data  # noqa: E402
from .test_edgetam import write_reference_checkpoint  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:cannot import name '_C':UserWarning",
                                        "ignore:.*post-processing.*:UserWarning")
SEQUENCE, FRAMES, SIZE = "boat", 5, (427, 240)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = write_reference_checkpoint(tmp_path_factory.mktemp("edgetam"))
    return path


@pytest.fixture(scope="module")
def davis(tmp_path_factory) -> Path:
    """A DAVIS 2016-layout folder: the first frames of the shared boat sequence at half size."""
    source = shared_data("davis-2016", pattern="00004.png")
    root = tmp_path_factory.mktemp("davis")
    frames, masks = root / "JPEGImages" / "480p" / SEQUENCE, root / "Annotations" / "480p" / SEQUENCE
    frames.mkdir(parents=True)
    masks.mkdir(parents=True)
    for i in range(FRAMES):
        name = f"{i:05d}"
        Image.open(source / "JPEGImages" / "480p" / SEQUENCE / f"{name}.jpg").resize(SIZE).save(
            frames / f"{name}.jpg", quality=95)
        Image.open(source / "Annotations" / "480p" / SEQUENCE / f"{name}.png").resize(SIZE, Image.NEAREST).save(
            masks / f"{name}.png")
    return root


@pytest.fixture(scope="module")
def streamed(checkpoint, davis, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    rc = main(["track", "eval", "--data", str(davis), "--output", str(out / "pred"), "--checkpoint", str(checkpoint),
               "--threads", "1", "--quiet"])
    assert rc == 0
    return out / "pred", json.loads((out / "pred" / "davis.json").read_text())


def test_track_eval_scores_the_stream_as_sam2s_whole_video_predictor_scores(checkpoint, davis, streamed, tmp_path):
    predictions, report = streamed
    assert sorted(p.name for p in (predictions / SEQUENCE).iterdir()) == [f"{i:05d}.png" for i in range(FRAMES)]
    # the offline reference: sam2's video API on the same frames, the mask prompt on frame 0
    predictor = build_video_predictor(checkpoint, fused=True)
    state = predictor.init_state(str(davis / "JPEGImages" / "480p" / SEQUENCE))
    first = read_annotation(davis / "Annotations" / "480p" / SEQUENCE / "00000.png")
    predictor.add_new_mask(state, frame_idx=0, obj_id=1, mask=torch.from_numpy(first == 1))
    offline = tmp_path / "offline" / SEQUENCE
    offline.mkdir(parents=True)
    like = davis / "Annotations" / "480p" / SEQUENCE / "00000.png"
    for t, ids, logits in predictor.propagate_in_video(state):
        result = StepResult(t, [int(i) for i in ids], logits[:, 0].numpy())
        mask = index_mask(result)
        assert 0 < mask.sum() < mask.size, f"frame {t}: an empty or full mask proves nothing"
        ours = np.asarray(Image.open(predictions / SEQUENCE / f"{t:05d}.png")) > 0
        assert (ours == (mask > 0)).all(), f"frame {t}: the streamed prediction differs from sam2's"
        write_annotation(offline / f"{t:05d}.png", mask, like=like)
    expected = evaluate_predictions(davis, tmp_path / "offline")
    assert report["J&F"]["mean"] == expected["J&F"]["mean"]
    assert report["J"] == expected["J"] and report["F"] == expected["F"]
    assert 0 < report["J"]["mean"] < 1 and report["sequences"][SEQUENCE]["frames"] == ["00001", "00002", "00003"]
    assert report["run"]["weights"] == str(checkpoint) and report["run"]["timings"][SEQUENCE]["frames"] == FRAMES


def test_a_rerun_skips_complete_sequences_and_a_broken_run_leaves_no_final_folder(checkpoint, davis, streamed,
                                                                                   tmp_path, capsys, monkeypatch):
    predictions, report = streamed
    args = ["track", "eval", "--data", str(davis), "--output", str(predictions), "--checkpoint", str(checkpoint),
            "--threads", "1", "--report", str(tmp_path / "again.json")]
    assert main(args) == 0
    assert "predictions complete" in capsys.readouterr().err
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["run"]["skipped_complete"] == [SEQUENCE] and again["J&F"] == report["J&F"]

    from repvit.edgetam import stream_torch
    calls = {"n": 0}
    real_step = stream_torch.TorchStreamingTracker.step

    def breaks(self, frame):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("the machine went away")
        return real_step(self, frame)
    monkeypatch.setattr(stream_torch.TorchStreamingTracker, "step", breaks)
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="went away"):
        main(["track", "eval", "--data", str(davis), "--output", str(fresh), "--checkpoint", str(checkpoint),
              "--threads", "1", "--quiet"])
    assert not (fresh / SEQUENCE).exists()             # only the hidden partial folder holds the two frames
    assert sorted(p.name for p in (fresh / f".{SEQUENCE}.partial").iterdir()) == ["00000.png", "00001.png"]


def test_predictions_of_any_method_are_scored_without_a_model(davis, tmp_path, capsys):
    truth = davis / "Annotations" / "480p"
    assert main(["track", "eval", "--data", str(davis), "--predictions", str(truth), "--report",
                 str(tmp_path / "truth.json")]) == 0
    report = json.loads((tmp_path / "truth.json").read_text())
    assert report["J&F"]["mean"] == 1.0 and report["J"]["recall"] == 1.0
    assert main(["track", "eval", "--data", str(davis), "--sequences", "boat,nope", "--predictions", str(truth)]) == 2
    assert "nope not in" in capsys.readouterr().err


def test_two_torchrun_ranks_share_the_sequences_and_a_rerun_resumes(checkpoint, tmp_path):
    """``torchrun --nproc_per_node 2 -m repvit track eval``: each rank tracks its sequence (one line each), rank 0
    scores both; the predictions equal a single process's, and a rerun skips what is complete."""
    import os
    import subprocess
    import sys
    source = shared_data("davis-2016", pattern="00002.png")
    root = tmp_path / "davis"
    for sequence in ("boat", "bus"):
        for kind, suffix in (("JPEGImages", "jpg"), ("Annotations", "png")):
            folder = root / kind / "480p" / sequence
            folder.mkdir(parents=True)
            for i in range(3):
                image = Image.open(source / kind / "480p" / sequence / f"{i:05d}.{suffix}")
                resample = Image.NEAREST if suffix == "png" else Image.BILINEAR
                image.resize((214, 120), resample).save(folder / f"{i:05d}.{suffix}")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "repvit",
           "track", "eval", "--data", str(root), "--output", str(tmp_path / "pred"), "--checkpoint", str(checkpoint),
           "--threads", "1", "--quiet"]
    first = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stderr.count("[rank 0] boat: 3 frames") == 1 and first.stderr.count("[rank 1] bus: 3 frames") == 1
    assert first.stdout.count("2 sequence(s)") == 1                 # rank 0 alone reports
    report = json.loads((tmp_path / "pred" / "davis.json").read_text())
    assert report["run"]["world_size"] == 2 and sorted(report["run"]["timings"]) == ["boat", "bus"]
    assert {report["run"]["timings"][s]["rank"] for s in ("boat", "bus")} == {0, 1}
    again = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[rank 0] boat: predictions complete" in again.stderr and "[rank 1] bus: predictions complete" in again.stderr
    rerun = json.loads((tmp_path / "pred" / "davis.json").read_text())
    assert rerun["run"]["skipped_complete"] == ["boat", "bus"] and rerun["J&F"] == report["J&F"]
    single = tmp_path / "single"
    assert main(["track", "eval", "--data", str(root), "--output", str(single), "--checkpoint", str(checkpoint),
                 "--threads", "1", "--quiet", "--sequences", "bus"]) == 0
    for i in range(3):   # the rank's predictions are a single process's
        assert (np.asarray(Image.open(single / "bus" / f"{i:05d}.png")) ==
                np.asarray(Image.open(tmp_path / "pred" / "bus" / f"{i:05d}.png"))).all()


def test_the_protocol_over_the_exported_graphs_scores_as_the_pytorch_stream(checkpoint, davis, streamed, tmp_path):
    """``--runtime onnxruntime``: the graphs are exported on first use, the objects prompted with their masks (the
    exported mask-prompt path), and the predictions are the PyTorch stream's; graphs exported before mask
    prompts get the spec's mask constants without being exported again."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    graphs = tmp_path / "graphs"
    cmd = ["track", "eval", "--data", str(davis), "--output", str(tmp_path / "pred"), "--checkpoint", str(checkpoint),
           "--threads", "1", "--quiet", "--runtime", "onnxruntime", "--export-dir", str(graphs)]
    assert main(cmd) == 0
    report = json.loads((tmp_path / "pred" / "davis.json").read_text())
    assert report["run"]["runtime"] == "onnxruntime" and report["run"]["graphs"] == str(graphs)
    torch_pred, torch_report = streamed
    for i in range(FRAMES):
        ours = read_annotation(tmp_path / "pred" / SEQUENCE / f"{i:05d}.png")
        theirs = read_annotation(torch_pred / SEQUENCE / f"{i:05d}.png")
        assert theirs.sum() > 100 and (ours == theirs).mean() > 0.999, i
    assert abs(report["J&F"]["mean"] - torch_report["J&F"]["mean"]) < 2e-3
    spec_path = graphs / "edgetam_export.json"
    spec = json.loads(spec_path.read_text())
    del spec["constants"]["mask_prompt"]                     # as a release before mask prompts wrote it
    spec_path.write_text(json.dumps(spec))
    stamps = {p.name: p.stat().st_mtime_ns for p in graphs.glob("*.onnx")}
    assert main(cmd + ["--overwrite"]) == 0
    assert "mask_prompt" in json.loads(spec_path.read_text())["constants"]
    assert {p.name: p.stat().st_mtime_ns for p in graphs.glob("*.onnx")} == stamps     # not exported again
