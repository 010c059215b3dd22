"""OpenVINO: the IR export (float and NNCF INT8) checked against the fused model, the bench rows,
``optimize_for_inference``'s choice, and the one-line message when the package is missing."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("openvino", reason="the deploy extra is not installed")

from repvit import create_model, is_fused, reparameterize, save_checkpoint  # noqa: E402
from repvit.cli import main  # noqa: E402
from repvit.classification.export import export_model  # noqa: E402
from repvit.export import ParityError  # noqa: E402
from repvit.export import openvino as fmt_ov  # noqa: E402
from repvit.export.verify import find_images, real_batch  # noqa: E402
from repvit.runtime import optimize as opt  # noqa: E402
from repvit.runtime.bench import cpu_latency, installed_runtimes  # noqa: E402
from repvit.engine.timing import cpu_name  # noqa: E402
from repvit.testing import randomize_batchnorm  # noqa: E402

IMG = 64
CLASSES = [f"class_{i}" for i in range(10)]


@pytest.fixture(scope="module", autouse=True)
def _no_telemetry():
    """OpenVINO's converter reports usage online unless it runs in CI: say so (tests never reach the network)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CI", "true")
        yield


@pytest.fixture(scope="module")
def model():
    """A distilled m0_6 with random BatchNorm statistics, so fusion changes every weight."""
    torch.manual_seed(0)
    m = create_model("repvit_m0_6", num_classes=10, distillation=True)
    randomize_batchnorm(m, seed=1)
    m.eval()
    m.class_names = list(CLASSES)
    return m


@pytest.fixture(scope="module")
def exported(model, tiny_imagenette, tmp_path_factory):
    """``repvit export --format openvino --int8`` from a checkpoint, to an explicit file name."""
    out = tmp_path_factory.mktemp("ov")
    ckpt = save_checkpoint(model, out / "trained.pth", class_names=CLASSES)
    code = main(["export", "--checkpoint", str(ckpt), "--format", "openvino", "--output", str(out / "model.xml"),
                 "--img-size", str(IMG), "--images", str(tiny_imagenette / "val"), "--num-real", "8",
                 "--int8", "--calib-images", str(tiny_imagenette / "train"), "--calib-count", "40",
                 "--report", str(out / "report.json")])
    assert code == 0
    return out, json.loads((out / "report.json").read_text())


def test_ir_pair_has_the_given_name_and_matches_the_fused_model(model, exported, tiny_imagenette):
    out, report = exported
    assert sorted(p.name for p in out.iterdir()) == ["model-int8.bin", "model-int8.xml", "model.bin", "model.xml",
                                                     "report.json", "trained.pth"]
    assert report["passed"] and report["path"] == str(out / "model.xml")
    kinds = {r["inputs"]: r for r in report["reports"]}
    assert set(kinds) == {"random", "real"} and kinds["real"]["count"] == 8
    for r in report["reports"]:
        assert r["max_abs_diff"] <= 1e-4 and r["tolerance"] == 1e-4 and r["max_abs_logit"] > 0.1
    assert not is_fused(model), "export must not fuse the caller's model"
    # Independently of the export's own check: other batch sizes, other real images, one thread.
    fused = reparameterize(model)
    run = fmt_ov.runner(out / "model.xml", threads=1)
    real = real_batch(find_images(tiny_imagenette / "val", 40)[-5:], json.loads(
        fmt_ov.read_metadata(out / "model.xml")["preprocessing"]))
    with torch.no_grad():
        for x in (torch.randn(1, 3, IMG, IMG) * 3, real):
            np.testing.assert_allclose(run(x).numpy(), fused(x).numpy(), atol=1e-4, rtol=0)
    facts = fmt_ov.check_graph(out / "model.xml")
    assert facts["dynamic_batch"] and facts["fake_quantize"] == 0 and "Convolution" in facts["ops"]


def test_ir_metadata_and_thread_setting(exported):
    out, _ = exported
    meta = fmt_ov.read_metadata(out / "model.xml")
    assert meta["variant"] == "repvit_m0_6" and meta["fused"] == "true" and meta["format"] == "openvino"
    assert json.loads(meta["class_names"]) == CLASSES and meta["precision"] == "float32"
    assert json.loads(meta["preprocessing"])["input_size"] == [3, IMG, IMG]
    for threads in (1, 2):
        compiled = fmt_ov.compile_model(out / "model.xml", threads)
        assert compiled.get_property("INFERENCE_NUM_THREADS") == threads
        assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) in ("f32", "<Type: 'float32'>")


def test_int8_ir_is_quantized_and_agrees_on_real_images(model, exported, tiny_imagenette):
    out, report = exported
    int8 = out / "model-int8.xml"
    assert report["int8_path"] == str(int8) and report["int8"]["calibration_images"] == 40
    facts = fmt_ov.check_graph(int8)
    assert facts["fake_quantize"] > 20 and report["int8"]["nodes"]["FakeQuantize"] == facts["fake_quantize"]
    assert facts["bytes"] < 0.5 * fmt_ov.check_graph(out / "model.xml")["bytes"], "weights should be int8"
    meta = fmt_ov.read_metadata(int8)
    assert meta["precision"] == "int8" and json.loads(meta["quantization"])["calibration"]["images"] == 40
    assert meta["variant"] == "repvit_m0_6", "the float IR's metadata is carried over"
    # Top-1 agreement with the fused float model on all 40 real validation images of the subset.
    pre = json.loads(meta["preprocessing"])
    real = real_batch(find_images(tiny_imagenette / "val", 40), pre)
    with torch.no_grad():
        want = reparameterize(model)(real)
    got = fmt_ov.runner(int8, threads=1)(real)
    agreement = (got.argmax(1) == want.argmax(1)).float().mean().item()
    assert agreement >= 0.9, agreement
    assert 0 < (got - want).abs().max().item() < 0.25 * want.abs().max().item()  # quantized, and close


def test_failed_parity_removes_both_files_or_keeps_them_marked(model, exported, tmp_path, monkeypatch):
    import shutil
    out, _ = exported

    def copy_exported(fused, path, **_):  # the conversion itself is tested above; reuse its IR
        shutil.copyfile(out / "model.xml", path)
        shutil.copyfile(out / "model.bin", fmt_ov.bin_path(path))
    real_runner = fmt_ov.runner
    monkeypatch.setattr(fmt_ov, "export_openvino", copy_exported)
    monkeypatch.setattr(fmt_ov, "runner", lambda path, threads=None: (lambda x: real_runner(path)(x) + 1e-3))
    with pytest.raises(ParityError, match="OpenVINO"):
        export_model(model, "openvino", tmp_path / "m.xml", img_size=IMG, num_real=0, num_random=1)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ParityError):
        export_model(model, "openvino", tmp_path / "m.xml", img_size=IMG, num_real=0, num_random=1, keep_failed=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-UNVERIFIED.bin", "m-UNVERIFIED.xml"]
    with pytest.raises(ValueError, match=r"\.bin"):
        export_model(model, "openvino", tmp_path / "m.bin", img_size=IMG)


def test_bench_rows_for_openvino_float_and_int8(tiny_imagenette):
    assert {"openvino", "openvino-int8"} <= set(installed_runtimes())
    report = cpu_latency(["repvit_m0_6"], runtimes=["eager-fused", "openvino", "openvino-int8"], img_size=32,
                         warmup=1, rounds=2, iters=2, threads=1, calib_images=tiny_imagenette / "train",
                         calib_count=10)
    rows = [(r.runtime, r.dtype) for r in report.results]
    assert rows == [("eager", "float32"), ("openvino", "float32"), ("openvino-int8", "int8 (NNCF)")]
    data = json.loads(json.dumps(report.as_dict()))
    for row in data["results"]:
        assert row["threads"] == 1 and row["cpu"] == cpu_name() and row["cpu"]
        assert row["load_avg_1min_before"] == data["load_avg_1min_before"] >= 0
        assert row["load_avg_1min_after"] == data["load_avg_1min_after"] >= 0
        assert row["median_ms"] > 0 and row["samples"] == 4
    assert "10 images" in data["results"][2]["note"]
    assert "openvino" in data["environment"]["versions"] and "nncf" in data["environment"]["versions"]


def test_optimize_for_inference_chooses_openvino_when_it_measures_fastest(model, monkeypatch):
    stub = {"eager": 3.0, "eager-channels-last": 2.0, "openvino": 1.0}

    def measured(candidates, **_):
        assert set(candidates) == set(stub)
        return {k: [stub[k]] * 3 for k in candidates}
    monkeypatch.setattr(opt, "time_interleaved", measured)
    best = opt.optimize_for_inference(model, "cpu", img_size=32, threads=1,
                                      candidates=["eager", "openvino", "eager-channels-last"])
    assert best.report["chosen"] == "openvino" and best.path == "fused+openvino"
    assert best.report["candidates"]["openvino"]["median_ms"] == 1.0
    assert best.report["candidates"]["openvino"]["max_abs_diff"] <= 1e-4
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(best(x), reparameterize(model)(x), atol=1e-4, rtol=0)


def test_optimize_for_inference_offers_openvino_only_when_installed(model, monkeypatch):
    built = []

    def cheap(kind, fused, img_size, threads):
        built.append(kind)
        return fused, False
    monkeypatch.setattr(opt, "_cpu_candidate", cheap)
    opt.optimize_for_inference(model, "cpu", img_size=32, measure=False)
    assert "openvino" in built
    built.clear()
    monkeypatch.setattr(opt, "_has_openvino", lambda: False)
    opt.optimize_for_inference(model, "cpu", img_size=32, measure=False)
    assert built and "openvino" not in built


def test_missing_openvino_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # "import openvino" now raises ImportError
    assert not fmt_ov.available()
    code = main(["export", "--model", "repvit_m0_6", "--num-classes", "10", "--format", "openvino",
                 "--output", str(tmp_path / "m.xml"), "--img-size", "32", "--num-real", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "openvino" in err and err.endswith("pip install 'repvit-pytorch[deploy]'")
    assert not os.listdir(tmp_path)
    assert "openvino" not in installed_runtimes()
    code = main(["bench", "--runtimes", "eager-fused,openvino", "--img-size", "32", "--threads", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.endswith("pip install 'repvit-pytorch[deploy]'"), err


def test_cli_segment_export_openvino_dynamic_sizes(tmp_path):
    from repvit.segmentation.semantic_fpn import SemanticFPN, save_segmenter
    from .conftest import shared_data
    torch.manual_seed(0)
    model = randomize_batchnorm(SemanticFPN("repvit_m0_6", num_classes=5)).eval()
    names = ["sky", "building", "pole", "road", "car"]
    path = save_segmenter(model, tmp_path / "seg.pth", class_names=names, ignore_index=5)
    report = tmp_path / "r.json"
    images = shared_data("camvid/val/images", pattern="*.jpg")
    assert main(["segment", "export", "--checkpoint", str(path), "--format", "openvino", "--output",
                 str(tmp_path / "seg.xml"), "--images", str(images), "--num-real", "1", "--report", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["passed"] and result["format"] == "openvino" and result["max_abs_diff"] <= 1e-3
    assert result["image_sizes"] == [[360, 480], [240, 360]]  # the photo and a crop whose sides are not /32
    assert (tmp_path / "seg.bin").is_file()
    assert json.loads(fmt_ov.read_metadata(tmp_path / "seg.xml")["class_names"]) == names
    # Independently: a third size, compared with the fused PyTorch model.
    x = torch.rand(1, 3, 200, 296)
    with torch.no_grad():
        want = reparameterize(model)(x)
    got = fmt_ov.array_runner(tmp_path / "seg.xml", threads=1)(x.numpy())[0]
    assert got.shape == (1, 5, 200, 296) and np.abs(got - want.numpy()).max() <= 1e-3


def test_a_graph_openvino_cannot_convert_names_the_operator(monkeypatch):
    class Svd(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.svdvals(x)
    with pytest.raises(ValueError) as caught:
        fmt_ov.convert(Svd(), (torch.randn(2, 4, 4),), what="test graph", instead="the ONNX export")
    message = str(caught.value)
    assert "cannot convert the test graph" in message and "svd" in message and message.endswith("the ONNX export")
    assert "\n" not in message
