"""``repvit sam export``: the fused encoder and the prompt decoder as ONNX (parity on a real photo at
1024, done once), dynamic point counts and boxes against ``SamPredictor``, Core ML conversion names,
ExecuTorch, and bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything")
pytest.importorskip("onnxruntime", reason="ONNX export needs pip install 'repvit-pytorch[onnx]'")

from repvit.cli import main  # noqa: E402
from repvit.sam import build_sam  # noqa: E402
from repvit.sam import export as sam_export  # noqa: E402
from repvit.sam import decoder_graph as sam_decoder, export_parity as sam_parity  # noqa: E402
from repvit.sam.builder import sam_with_encoder  # noqa: E402
from repvit.sam.encoder import RepViTSamEncoder  # noqa: E402
from repvit.data.images import load_rgb  # noqa: E402

from .conftest import SHARED_DATA, shared_data  # noqa: E402

DATA = SHARED_DATA
PHOTO = DATA / "coco128-instances" / "images" / "val2017" / "000000000139.jpg"  # 640x426 living room


def need_photo() -> Path:
    return shared_data(str(PHOTO.relative_to(DATA)), path=PHOTO)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One end-to-end CLI run at 1024 on a real photo: ONNX encoder and decoder with their parity report."""
    photo = need_photo()
    out = tmp_path_factory.mktemp("sam-export")
    code = main(["sam", "export", "--random-weights", "--output", str(out), "--format", "onnx",
                 "--images", str(photo)])
    assert code == 0
    return out, json.loads((out / "repvit_sam_export.json").read_text())


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)  # what --random-weights builds
    return build_sam(fused=True)


@pytest.fixture(scope="module")
def onnx_embedding(exported, sam):
    """The photo's embedding computed by the exported ONNX encoder (a real-image embedding for the decoder)."""
    out, _ = exported
    image = load_rgb(PHOTO)
    x = sam_parity.preprocess(sam, image)
    return image, sam_export.onnx_encoder_runner(out / "repvit_sam_encoder.onnx")(x)


def test_cli_writes_both_onnx_files_that_pass_parity_on_the_photo(exported, capsys):
    out, report = exported
    assert (out / "repvit_sam_encoder.onnx").is_file() and (out / "repvit_sam_decoder.onnx").is_file()
    assert report["passed"] and report["failures"] == []
    assert report["parity_on"] == "real photographs"
    assert [i["name"] for i in report["parity_images"]] == [str(PHOTO)]
    assert report["weights"].startswith("random")
    encoder = report["formats"]["onnx"]["encoder"]
    assert encoder["inputs"] == {"image": [1, 3, 1024, 1024]} and encoder["outputs"] == ["image_embeddings"]
    assert encoder["batch_norm_nodes"] == 0
    assert 0 <= encoder["max_abs_diff"] <= sam_parity.ENCODER_TOLERANCE and encoder["largest_embedding"] > 0.1
    decoder = report["formats"]["onnx"]["decoder"]
    assert list(decoder["inputs"]) == list(sam_decoder.DECODER_INPUTS)
    assert decoder["outputs"] == list(sam_decoder.DECODER_OUTPUTS)
    assert decoder["inputs"]["point_coords"] == [1, "num_points", 2]
    assert decoder["vs_pytorch_module"]["passed"] and decoder["vs_sam_predictor"]["passed"]
    assert decoder["max_abs_diff"] <= sam_parity.DECODER_TOLERANCE
    assert len(decoder["point_counts"]) >= 2
    prompts = {c["prompt"] for c in decoder["cases"]}
    assert {"one click", "box", "box and background click", "click with previous mask"} <= prompts
    assert all(c["mask_shape"] == [1, 4, 426, 640] for c in decoder["cases"])
    assert sam_export.onnx_session(out / "repvit_sam_encoder.onnx").get_inputs()[0].shape == [1, 3, 1024, 1024]


def test_parity_checks_fail_loudly_and_remove_the_file(onnx_embedding, sam, tmp_path):
    """The checks can fail: an encoder off by 1e-2 and a decoder whose masks are shifted are caught."""
    image, embedding = onnx_embedding
    predictor = sam_parity.predictor_with_embedding(sam, embedding, image.shape[:2])
    encoded = [(str(PHOTO), image, torch.zeros(1, 3, 1024, 1024), predictor)]
    check = sam_parity.check_encoder(lambda x: embedding + 1e-2, encoded)
    assert not check["passed"] and check["max_abs_diff"] == pytest.approx(1e-2, rel=1e-3)
    exact = sam_parity.check_encoder(lambda x: embedding, encoded)
    assert exact["passed"] and exact["max_abs_diff"] == 0.0
    module = sam_decoder.prompt_decoder(sam)
    shifted = lambda feed: [o.numpy() + (0.01 if i == 0 else 0.0)
                            for i, o in enumerate(module(*(torch.from_numpy(v) for v in feed.values())))]
    check = sam_parity.check_decoder(shifted, sam, encoded, prompts=lambda h, w: sam_parity.parity_prompts(h, w)[:1])
    assert not check["passed"] and check["vs_sam_predictor"]["max_abs_diff"] == pytest.approx(0.01, abs=1e-4)
    failing = tmp_path / "failing.onnx"
    failing.write_text("x")
    assert sam_parity.discard_failed(check, failing)["removed"] == str(failing) and not failing.exists()


@pytest.mark.parametrize("prompt", [
    {"points": [[320, 200], [100, 300], [500, 80], [600, 400], [20, 20]], "labels": [1, 0, 1, 1, 0]},
    {"box": [150, 100, 520, 380], "points": [[320, 200]], "labels": [1]},
], ids=["5 clicks", "box + click"])
def test_decoder_onnx_follows_sam_predictor_for_any_point_count(exported, onnx_embedding, sam, prompt):
    out, _ = exported
    image, embedding = onnx_embedding
    h, w = image.shape[:2]
    predictor = sam_parity.predictor_with_embedding(sam, embedding, (h, w))
    coords, labels = sam_decoder.onnx_prompt((h, w), prompt.get("points"), prompt.get("labels"), prompt.get("box"))
    assert coords.shape[1] == len(prompt.get("points", [])) + (2 if "box" in prompt else 1)
    feed = {"image_embeddings": embedding, "point_coords": coords, "point_labels": labels,
            "mask_input": np.zeros((1, 1, 256, 256), np.float32), "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array([h, w], np.float32)}
    masks, scores, low = sam_export.onnx_session(out / "repvit_sam_decoder.onnx").run(None, feed)
    kwargs = dict(point_coords=np.array(prompt["points"]) if "points" in prompt else None,
                  point_labels=np.array(prompt["labels"]) if "points" in prompt else None,
                  box=np.array(prompt["box"]) if "box" in prompt else None, return_logits=True)
    one, one_score, _ = predictor.predict(multimask_output=False, **kwargs)
    three, three_scores, three_low = predictor.predict(multimask_output=True, **kwargs)
    assert masks.shape == (1, 4, h, w)
    assert np.abs(masks[0, :1] - one).max() < 1e-3 and np.abs(masks[0, 1:] - three).max() < 1e-3
    assert np.abs(scores[0] - np.concatenate([one_score, three_scores])).max() < 1e-4
    assert np.abs(low[0, 1:] - three_low).max() < 1e-3
    assert ((masks[0] > 0) == (np.concatenate([one, three]) > 0)).mean() > 0.9999


def test_decoder_masks_follow_orig_im_size_for_other_aspect_ratios(exported, onnx_embedding, sam):
    """Stock SamOnnxModel keeps the crop of its example size when traced; ours must follow orig_im_size."""
    out, _ = exported
    _, embedding = onnx_embedding
    sess = sam_export.onnx_session(out / "repvit_sam_decoder.onnx")
    module = sam_decoder.prompt_decoder(sam)
    for h, w in [(900, 600), (480, 1000), (333, 333)]:
        coords, labels = sam_decoder.onnx_prompt((h, w), [[w / 2, h / 3]], [1])
        feed = {"image_embeddings": embedding, "point_coords": coords, "point_labels": labels,
                "mask_input": np.zeros((1, 1, 256, 256), np.float32), "has_mask_input": np.zeros(1, np.float32),
                "orig_im_size": np.array([h, w], np.float32)}
        got = sess.run(None, feed)
        want = module(*(torch.from_numpy(v) for v in feed.values()))
        assert got[0].shape == (1, 4, h, w)
        assert max(np.abs(g - t.numpy()).max() for g, t in zip(got, want)) < 1e-3


def test_onnx_prompt_encodes_boxes_and_padding_as_sam_predictor():
    coords, labels = sam_decoder.onnx_prompt((500, 1000), [[100, 50]], [1])
    assert labels.tolist() == [[1, -1]] and np.allclose(coords, [[[102.4, 51.2], [0, 0]]])
    coords, labels = sam_decoder.onnx_prompt((500, 1000), [[100, 50]], [0], box=[10, 20, 300, 400])
    assert labels.tolist() == [[0, 2, 3]]
    assert np.allclose(coords, np.array([[[102.4, 51.2], [10.24, 20.48], [307.2, 409.6]]]))
    with pytest.raises(ValueError, match="box"):
        sam_decoder.onnx_prompt((500, 1000), [[1, 2]], [2])
    with pytest.raises(ValueError, match="at least one point or a box"):
        sam_decoder.onnx_prompt((500, 1000))
    with pytest.raises(ValueError, match="2 points but 1 labels"):
        sam_decoder.onnx_prompt((500, 1000), [[1, 2], [3, 4]], [1])


def test_single_mask_and_stability_options_match_predictor_semantics(exported, onnx_embedding, sam, tmp_path):
    """--return-single-mask / --use-stability-score: the decoder is rebuilt (no encoder run) and checked."""
    image, embedding = onnx_embedding
    path = tmp_path / "single.onnx"
    facts = sam_export.export_decoder_onnx(sam, path, return_single_mask=True, use_stability_score=True)
    assert facts["inputs"]["point_labels"] == [1, "num_points"]
    h, w = image.shape[:2]
    predictor = sam_parity.predictor_with_embedding(sam, embedding, (h, w))
    encoded = [(str(PHOTO), image, None, predictor)]
    two_and_four_points = [{"name": "one click", "points": [[300, 200]], "labels": [1]},
                           {"name": "three clicks", "points": [[300, 200], [50, 60], [400, 100]], "labels": [1, 0, 1]}]
    check = sam_parity.check_decoder(sam_export.onnx_decoder_runner(path), sam, encoded, return_single_mask=True,
                                     use_stability_score=True, prompts=lambda h, w: two_and_four_points)
    assert check["passed"], check
    assert all(c["mask_shape"] == [1, 1, h, w] for c in check["cases"])


def test_low_res_decoder_equals_the_onnx_module_and_the_mask_decoder():
    """The Core ML decoder runs the shared ``decode_all_masks``: same numbers as the ONNX decoder's module
    and as segment-anything's own ``MaskDecoder`` on the same prompt embeddings."""
    torch.manual_seed(0)
    small = sam_with_encoder(RepViTSamEncoder("repvit_m0_6", img_size=256), img_size=256).eval()
    example = sam_decoder.decoder_example(small, num_points=7)
    with torch.no_grad():
        iou, low = sam_decoder.LowResDecoder(small)(*example[:5])
        _, ref_iou, ref_low = sam_decoder.prompt_decoder(small)(*example)
        inner = sam_decoder.prompt_decoder(small)
        sparse = inner._embed_points(example[1], example[2])
        dense = inner._embed_masks(example[3], example[4])
        single = small.mask_decoder(image_embeddings=example[0], image_pe=small.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    multimask_output=False)
        multi = small.mask_decoder(image_embeddings=example[0], image_pe=small.prompt_encoder.get_dense_pe(),
                                   sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                   multimask_output=True)
    assert low.shape == (1, 4, 64, 64) and iou.shape == (1, 4)  # 4x the 16x16 embedding grid at img_size 256
    assert (low - ref_low).abs().max() < 1e-5 and (iou - ref_iou).abs().max() < 1e-5
    stock_low, stock_iou = torch.cat([single[0], multi[0]], 1), torch.cat([single[1], multi[1]], 1)
    assert (low - stock_low).abs().max() < 1e-4 and (iou - stock_iou).abs().max() < 1e-5
    assert low.abs().max() > 0.1  # not a trivially zero comparison


def test_coreml_conversion_has_the_expected_inputs_and_outputs(tmp_path):
    pytest.importorskip("coremltools", reason="Core ML export needs pip install 'repvit-pytorch[coreml]'")
    torch.manual_seed(0)
    small = sam_with_encoder(RepViTSamEncoder("repvit_m0_6", img_size=256), img_size=256)  # names, not numbers
    try:
        enc = sam_export.export_encoder_coreml(small, tmp_path / "enc.mlpackage")
        dec = sam_export.export_decoder_coreml(small, tmp_path / "dec.mlpackage", max_points=8)
    except (RuntimeError, NotImplementedError) as err:
        pytest.skip(f"coremltools cannot convert on this platform: {err}")
    assert (tmp_path / "enc.mlpackage").is_dir() and (tmp_path / "dec.mlpackage").is_dir()
    assert enc["type"] == dec["type"] == "mlProgram"
    assert enc["inputs"] == {"image": [1, 3, 256, 256]} and list(enc["outputs"]) == ["image_embeddings"]
    assert list(dec["inputs"]) == ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"]
    assert dec["inputs"]["point_coords"] == [[1, 1], [1, 8], [2, 2]]
    assert list(dec["outputs"]) == ["iou_predictions", "low_res_masks"]
    assert dec["converted_module_vs_onnx_module"] < 1e-5
    if not sam_export.coreml_can_predict():
        assert "macOS" in enc["note"] and enc["predicted"] is False


def test_bad_input_is_refused_with_a_clear_message(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown export format.*'tflite'.*onnx, coreml, executorch"):
        sam_export.parse_formats("onnx,tflite")
    assert main(["sam", "export", "--random-weights", "-o", str(tmp_path), "--format", "tflite"]) == 2
    assert "unknown export format" in capsys.readouterr().err
    assert main(["sam", "export", "--random-weights", "-o", str(tmp_path), "--images", str(tmp_path / "nope.jpg")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["sam", "export", "-o", str(tmp_path)]) == 2
    assert "--random-weights" in capsys.readouterr().err
    assert main(["sam", "export", "--random-weights", "--num-real", "0"]) == 2
    assert "--num-real must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:      # the old spelling: --max-images is the input's count elsewhere
        main(["sam", "export", "--random-weights", "--max-images", "0"])
    assert refused.value.code == 2 and "write --num-real N" in capsys.readouterr().err
    # Export always writes the fused encoder: --unfused is not offered (hidden from --help) and the
    # old spelling only says so, for one release (docs/cli.md, deprecated spellings).
    from repvit.cli import build_parser
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["sam", "export", "--help"])
    assert "--unfused" not in capsys.readouterr().out
    parser.parse_args(["sam", "export", "--random-weights", "--unfused", "-o", str(tmp_path)])
    assert "--unfused is deprecated" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="existing file"):
        sam_export.export_sam(torch.nn.Linear(1, 1), tmp_path / "file")
    with pytest.raises(TypeError, match="Sam model"):
        sam_export.fused_cpu_copy(torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="uint8 RGB"):
        sam_parity.preprocess(build_sam(img_size=64), np.zeros((10, 10), np.float32))
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        sam_parity.parity_images(not_image)


def test_int8_encoders_are_quantized_and_keep_the_masks(tmp_path, capsys):
    """``int8=True``: an INT8 encoder beside each float one (small model at 256 px, calibrated on COCO photos),
    really quantized (QDQ nodes, an embedding off by more than float rounding) and kept because the float
    decoder's masks from it agree with the float encoder's; a stricter threshold removes it."""
    import importlib.util
    from repvit.sam import export_int8 as sam_int8
    from repvit.export.quantize import count_quantized
    need_photo()
    torch.manual_seed(0)
    small = sam_with_encoder(RepViTSamEncoder("repvit_m0_6", img_size=256), img_size=256).eval()
    formats = ["onnx"] + (["openvino"] if importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf")
                          else [])
    calib = DATA / "coco128-instances" / "images" / "train2017"
    report = sam_export.export_sam(small, tmp_path, formats=formats, images=[PHOTO], int8=True, calibration=calib,
                                   calib_count=4, strict=False)
    assert report["passed"] and report["int8_calibration"]["images"] == 4
    for fmt in formats:
        entry = report["formats"][fmt]["encoder_int8"]
        assert Path(entry["path"]).is_file() and entry["passed"], fmt
        assert len(entry["cases"]) == 3 and entry["mask_iou_mean"] >= 0.9, entry["cases"]
        # quantized for real: the embedding moved far more than float rounding (the float file's is ~1e-6)
        assert 1e-3 < entry["embedding_relative_l2"][str(PHOTO)] < 0.5, entry["embedding_relative_l2"]
        assert all(c["float_mask_pixels"] > 0 for c in entry["cases"])
    assert count_quantized(tmp_path / "repvit_sam_encoder-int8.onnx")["QuantizeLinear"] > 20
    encoded = sam_parity.encode_images(sam_export.fused_cpu_copy(small), [(str(PHOTO), load_rgb(PHOTO))])
    runner = sam_export.onnx_encoder_runner(tmp_path / "repvit_sam_encoder-int8.onnx")
    strict = sam_int8.check_int8_encoder(runner, small, encoded, min_mask_iou=1.01)
    assert not strict["passed"] and strict["mask_iou_mean"] == pytest.approx(
        report["formats"]["onnx"]["encoder_int8"]["mask_iou_mean"])
    with pytest.raises(ValueError, match="needs real photos"):
        sam_int8.calibration_inputs(small, None)
    assert main(["sam", "export", "--random-weights", "-o", str(tmp_path / "x"), "--int8"]) == 2
    assert "--int8 needs --calib-images" in capsys.readouterr().err
    with pytest.raises(ValueError, match="none of them is among the formats"):
        sam_export.export_sam(small, tmp_path / "y", formats="coreml", int8=True, calibration=calib)


def test_sam_eval_scores_an_exported_encoder_file(exported, tmp_path, capsys):
    """``repvit sam eval --encoder FILE``: the exported float encoder through ONNX Runtime scores what the
    PyTorch encoder scores (same weights, embeddings 3e-6 apart), on a real COCO-format photo."""
    fruit = shared_data("fruit", pattern="annotations.json")
    out, _ = exported
    reports = {}
    for name, extra in (("pytorch", []), ("onnx", ["--encoder", str(out / "repvit_sam_encoder.onnx")])):
        path = tmp_path / f"{name}.json"
        assert main(["sam", "eval", "--data", str(fruit), "--random-weights", "--max-images", "1", "--prompt", "box",
                     "--quiet", "--report", str(path), *extra]) == 0
        reports[name] = json.loads(path.read_text())
    assert reports["onnx"]["encoder_file"].endswith("repvit_sam_encoder.onnx")
    assert reports["pytorch"]["encoder_file"] is None
    assert reports["onnx"]["instances"] == reports["pytorch"]["instances"] > 0
    box = {name: r["prompts"]["box"]["mIoU"] for name, r in reports.items()}
    assert box["onnx"] == pytest.approx(box["pytorch"], abs=1e-3)
    assert main(["sam", "eval", "--data", str(fruit), "--random-weights", "--encoder", str(tmp_path / "x.bin")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "x.bin").write_bytes(b"0")
    assert main(["sam", "eval", "--data", str(fruit), "--random-weights", "--encoder", str(tmp_path / "x.bin")]) == 2
    assert ".onnx, .xml, .tflite, .pte" in capsys.readouterr().err


def test_parity_images_fall_back_to_photos_then_a_test_card(monkeypatch):
    images = sam_parity.parity_images(None, limit=1)
    assert len(images) == 1 and images[0][1].dtype == np.uint8
    monkeypatch.setattr(sam_parity, "find_images", lambda source, limit: [])
    (name, card), = sam_parity.parity_images(None)
    assert name == "synthetic" and card.shape == (480, 640, 3)


def test_the_sam_model_code_does_not_import_its_exporters():
    """SAM owns its exporters (repvit.sam.export*, on the format backends of repvit.export), but its model,
    prompts, evaluation and distillation import neither them nor the backends: a user who never exports
    needs no onnx, openvino or litert."""
    from tests.test_layout import import_graph
    graph = import_graph()
    deploy = ("repvit.export", "repvit.sam.export", "repvit.sam.decoder_graph", "repvit.sam.exported")
    model_code = [m for m in graph if m.startswith("repvit.sam") and not m.startswith(deploy)]
    assert "repvit.sam.builder" in model_code and "repvit.sam.evaluation" in model_code
    upward = {m: sorted(t for t in graph[m] if t.startswith(deploy)) for m in model_code}
    assert not {m: t for m, t in upward.items() if t}
    assert "repvit.export.onnx" in graph["repvit.sam.export"]  # the check sees real edges
