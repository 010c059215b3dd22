"""The benchmark harness in a tiny configuration: structure and conditions, never timing values."""
from __future__ import annotations

import json

import pytest
import torch

from repvit.engine.timing import summarize, time_interleaved

from repvit.runtime.bench import cpu_latency, format_report, ratios
from repvit.cli import main

TINY = dict(img_size=32, warmup=1, rounds=2, iters=2, threads=1)


def test_interleaving_rotates_order_and_counts_samples():
    calls = []
    samples = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                               warmup=1, rounds=2, iters=3)
    assert calls[:2] == ["a", "b"]  # warm-up
    assert calls[2:] == ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3  # round 2 starts with b
    assert {k: len(v) for k, v in samples.items()} == {"a": 6, "b": 6}
    assert all(t >= 0 for v in samples.values() for t in v)
    with pytest.raises(ValueError):
        time_interleaved({"a": lambda: None}, rounds=0)


def test_summary_statistics():
    stats = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert stats == {"samples": 5, "median_ms": 3.0, "p10_ms": 1.0, "p90_ms": 5.0, "min_ms": 1.0}


def test_cpu_latency_every_runtime_with_conditions():
    # OpenVINO's rows are checked in test_export_openvino.py (the default adds them when it is installed).
    report = cpu_latency(["repvit_m0_6"], runtimes=["eager-unfused", "eager-fused", "torchscript", "onnxruntime",
                                                    "int8"], **TINY)
    runtimes = [(r.runtime, r.fused) for r in report.results]
    assert runtimes == [("eager", False), ("eager", True), ("torchscript", True), ("onnxruntime", True),
                        ("onnxruntime-int8", True)]
    for r in report.results:
        assert r.median_ms > 0 and r.p90_ms >= r.median_ms >= r.p10_ms > 0 and r.img_per_s > 0
        assert r.samples == 4 and r.threads == 1 and r.batch == 1 and r.device == "cpu"
        assert r.paper_iphone12_ms == 0.6
    assert report.results[-1].dtype.startswith("int8") and "random" in report.results[-1].note
    env = report.environment
    assert env["versions"]["torch"] == torch.__version__ and "onnxruntime" in env["versions"]
    assert report.load_before >= 0 and report.load_after >= 0
    text = format_report(report)
    assert "paper iPhone 12 ms" in text and "0.6 (paper)" in text and "threads" in text
    json.dumps(report.as_dict())  # serializable


def test_channels_last_and_compile_rows_and_compile_is_opt_in(monkeypatch):
    from torch._inductor import config as inductor_config
    from repvit.runtime.bench import installed_runtimes
    assert "eager-fused-cl" in installed_runtimes() and "compile" not in installed_runtimes()
    # Inductor itself is PyTorch's to test (and takes a minute here): check that the fused model is what
    # gets compiled and that its first call (the compilation) runs with weight freezing on.
    compiled = []

    def fake_compile(module):
        def first_call(x):
            compiled.append((type(module).__name__, inductor_config.freezing))
            return module(x)
        return first_call
    monkeypatch.setattr(torch, "compile", fake_compile)
    report = cpu_latency(["repvit_m0_6"], runtimes=["eager-fused", "eager-fused-cl", "compile"], **TINY)
    assert compiled[0] == ("RepViT", True) and not inductor_config.freezing
    rows = {r.runtime: r for r in report.results}
    assert set(rows) == {"eager", "eager-channels-last", "torch.compile"}
    assert rows["eager-channels-last"].memory_format == "channels_last" and rows["eager-channels-last"].fused
    assert rows["torch.compile"].compiled and "freezing" in rows["torch.compile"].note
    assert all(r.median_ms > 0 and r.samples == 4 for r in report.results)


def test_compare_timm_runs_both_in_one_report():
    report = cpu_latency(["repvit_m0_9"], runtimes=["eager-fused"], compare_timm=True, **TINY)
    assert [(r.source, r.fused) for r in report.results] == [("repvit", True), ("timm", True)]
    (row,) = ratios(report)
    assert row["model"] == "repvit_m0_9" and row["ratio"] > 0


def test_cli_bench_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--model", "repvit_m0_6", "--img-size", "32", "--runtimes", "eager-fused,onnxruntime",
                 "--warmup", "1", "--rounds", "1", "--repeats", "2", "--threads", "1", "--report", str(out), "--quiet"])
    assert code == 0
    assert "repvit_m0_6" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert {"environment", "settings", "results", "load_avg_1min_before", "paper_latency_note"} <= set(data)
    for r in data["results"]:
        for key in ("device", "threads", "dtype", "memory_format", "batch", "fused", "median_ms", "p10_ms",
                    "p90_ms", "img_per_s", "paper_iphone12_ms"):
            assert key in r
        assert r["median_ms"] > 0


def test_cli_bench_rejects_gpu_options_on_cpu_and_missing_gpu(capsys):
    assert main(["bench", "--compile"]) == 2
    assert "GPU throughput options" in capsys.readouterr().err
    assert main(["bench", "--runtimes", "tensorrt", "--img-size", "32"]) == 2
    if not torch.cuda.is_available():
        assert main(["bench", "--device", "cuda", "--img-size", "32"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_cli_bench_reads_the_variant_from_a_checkpoint(tmp_path, capsys):
    from repvit import create_model, save_checkpoint
    ckpt = save_checkpoint(create_model("repvit_m0_6", num_classes=3).eval(), tmp_path / "m.pth")
    code = main(["bench", "--checkpoint", str(ckpt), "--img-size", "32", "--runtimes", "eager-fused",
                 "--warmup", "1", "--rounds", "1", "--repeats", "1", "--threads", "1", "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)  # stdout is pure JSON with --json -
    assert [r["model"] for r in data["results"]] == ["repvit_m0_6"]


def test_dense_task_times_repvit_and_mobilenet_through_the_same_runtimes():
    from repvit.runtime.bench import installed_runtimes
    from repvit.runtime.module_bench import dense_subjects, goal_ratios, module_latency
    runtimes = ["eager-unfused", "eager-fused", "torchscript", "onnxruntime", "int8"]
    runtimes += [r for r in ("openvino", "openvino-int8") if r in installed_runtimes()]
    report = module_latency(dense_subjects(["repvit_m0_6"]), task="dense", img_size=64, threads=1,
                            runtimes=runtimes, warmup=1, rounds=1, iters=2)
    rows = {(r.model, r.source, r.runtime, r.fused) for r in report.results}
    timed = ["eager", "torchscript", "onnxruntime", "onnxruntime-int8"] + [r for r in runtimes if "openvino" in r]
    # MobileNetV3's frozen BatchNorm has nothing to fold: no unfused row of its own.
    assert rows == ({("repvit_m0_6 + FPN", "repvit", rt, True) for rt in timed}
                    | {("mobilenet_v3_large + FPN", "torchvision", rt, True) for rt in timed}
                    | {("repvit_m0_6 + FPN", "repvit", "eager", False)})
    assert all(r.samples == 2 and r.median_ms > 0 and r.img_size == 64 and r.cpu for r in report.results)
    assert report.settings["task"] == "dense"
    ratios = {(g["model"], g["runtime"], g["dtype"]): g for g in goal_ratios(report)}
    own = ratios[("repvit_m0_6 + FPN", "onnxruntime", "float32")]
    eager = [r for r in report.results if r.model == "repvit_m0_6 + FPN" and r.runtime == "eager" and r.fused][0]
    ort = [r for r in report.results if r.model == "repvit_m0_6 + FPN" and r.runtime == "onnxruntime"][0]
    mobilenet = [r for r in report.results if r.source == "torchvision" and r.runtime == "onnxruntime"][0]
    assert own["vs_own_fused_eager"] == pytest.approx(ort.median_ms / eager.median_ms)
    assert own["vs_mobilenet_v3_large_same_runtime"] == pytest.approx(ort.median_ms / mobilenet.median_ms)
    assert "vs_mobilenet_v3_large_same_runtime" not in ratios[("mobilenet_v3_large + FPN", "onnxruntime", "float32")]


def test_a_runtime_that_disagrees_with_eager_is_not_timed():
    import numpy as np
    from repvit.runtime.module_bench import _check
    _check(lambda: [np.ones(3) + 1e-4], [np.ones(3)], "close enough")
    with pytest.raises(ValueError, match="disagrees with eager PyTorch"):
        _check(lambda: [np.zeros(3)], [np.ones(3)], "broken")


def test_cli_bench_sam_task_and_what_it_refuses(tmp_path, capsys):
    out = tmp_path / "sam.json"
    assert main(["bench", "--task", "sam", "--img-size", "128", "--runtimes", "eager-fused,eager-fused-cl",
                 "--warmup", "1", "--rounds", "1", "--repeats", "1", "--threads", "1", "--report", str(out),
                 "--quiet"]) == 0
    data = json.loads(out.read_text())
    assert [(r["model"], r["memory_format"]) for r in data["results"]] == [("repvit_sam encoder", "NCHW"),
                                                                           ("repvit_sam encoder", "channels_last")]
    assert data["settings"]["task"] == "sam" and data["ratios"][0]["vs_own_fused_eager"] == 1.0
    capsys.readouterr()
    assert main(["bench", "--task", "dense", "--compare-timm"]) == 2
    assert "--compare-timm: the classifier's options" in capsys.readouterr().err
    assert main(["bench", "--task", "sam", "--model", "repvit_m0_9"]) == 2
    assert "drop --model" in capsys.readouterr().err


def test_a_missing_litert_runtime_is_one_line_naming_the_extra(monkeypatch, capsys):
    import sys
    from repvit.runtime.bench import installed_runtimes
    monkeypatch.setitem(sys.modules, "litert_torch", None)   # "import litert_torch" now fails
    assert "litert" not in installed_runtimes() and "litert-int8" not in installed_runtimes()
    code = main(["bench", "--runtimes", "eager-fused,litert-int8", "--img-size", "32", "--threads", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.endswith("pip install 'repvit-pytorch[litert]'"), err


def test_cli_bench_track_task_times_each_tracker_per_frame_beside_its_graphs_and_the_limit(tmp_path, capsys):
    """``--task track``: the PyTorch stream and the exported graphs on ONNX Runtime, two objects, one row each with
    a frame's time; the exported tracker's time split over its four graphs; the multiply-add limit beside them."""
    pytest.importorskip("sam2", reason="EdgeTAM needs the edgetam extra (Meta's sam2)")
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    out = tmp_path / "track.json"
    assert main(["bench", "--task", "track", "--img-size", "256", "--objects", "2", "--runtimes",
                 "eager-fused,onnxruntime", "--warmup", "1", "--rounds", "2", "--repeats", "2", "--threads", "1",
                 "--report", str(out), "--quiet"]) == 0
    data = json.loads(out.read_text())
    rows = {r["runtime"]: r for r in data["results"]}
    assert sorted(rows) == ["eager", "onnxruntime"] and data["settings"]["objects"] == 2
    assert all(r["samples"] == 4 and r["median_ms"] > 0 and r["model"] == "EdgeTAM stream, 2 object(s)"
               for r in rows.values())
    assert all(abs(r["img_per_s"] - 1e3 / r["median_ms"]) < 1e-6 for r in rows.values())   # frames/s of the median
    graphs = data["graphs_ms_per_frame"]["onnxruntime"]
    assert sorted(graphs) == ["image_encoder", "memory_attention", "memory_encoder", "prompt_decoder"]
    assert all(ms > 0 for ms in graphs.values())
    assert sum(graphs.values()) < 1.5 * rows["onnxruntime"]["median_ms"]     # the graphs are the frame's time
    limit = data["limit"]
    macs = limit["gmacs_per_graph_one_object"]
    # attention counted: the memory attention is more work than the image encoder (as at 1024: 44.5 vs 19.4)
    assert macs["memory_attention"] > macs["image_encoder"] > macs["prompt_decoder"] > 0
    # the image encoder is convolutions only: 1/16 of its 19.35 GMAC at 1024 (benchmarks/edgetam.md) at 256
    assert abs(16 * macs["image_encoder"] - 19.35) < 0.1
    assert abs(limit["gmacs_per_frame"] - (macs["image_encoder"] + 2 * (macs["memory_attention"] + macs[
        "prompt_decoder"] + macs["memory_encoder"]))) < 0.05
    assert 0 < limit["ms_per_frame_at_sgemm_peak"] < rows["eager"]["median_ms"]
    capsys.readouterr()
    assert main(["bench", "--task", "track", "--runtimes", "litert"]) == 2
    assert "--task track runs on eager-fused, onnxruntime, int8, openvino, openvino-int8" in capsys.readouterr().err
    assert main(["bench", "--task", "track", "--model", "repvit_m0_9"]) == 2
    assert "--model: not options of --task track" in capsys.readouterr().err
