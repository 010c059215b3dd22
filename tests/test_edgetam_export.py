"""EdgeTAM's tracking loop exported to ONNX: each graph against sam2's own methods on the same inputs, and
the numpy + ONNX Runtime loop against ``build_video_predictor``'s ``propagate_in_video`` on real frames of
../shared/data/videos/bedroom. Weights: the reference's seeded ones in the official layout (as in
test_edgetam_track.py), so the masks are real shapes, not constants."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytest.importorskip("sam2", reason="EdgeTAM needs the edgetam extra (Meta's sam2)")
pytest.importorskip("onnxruntime", reason="the ONNX loop needs the onnx extra")

from repvit.edgetam import build_video_predictor  # noqa: E402
from repvit.edgetam.export import FILES, NAMES, SPEC_NAME, export_edgetam  # noqa: E402
from repvit.edgetam.onnx_predictor import (Memory, OnnxTracker, choose, resize_antialiased,  # noqa: E402
                                        resize_bilinear, round_to_bfloat16, use_multimask)

from .conftest import shared_data  # noqa: E402
from .test_edgetam import write_reference_checkpoint  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:cannot import name '_C':UserWarning")

SIZE = (320, 180)                 # the 960x540 frames downscaled; the model sees 1024x1024 either way
SOURCE_FRAMES = (0, 10, 20, 30)   # four frames: the prompt, then one, two and three memories
CLICK = (133.0, 73.0)             # on the girl ((400, 220) of the 960x540 frame)
BOX = (50.0, 43.0, 97.0, 137.0)   # around the boy


def close(got, want, rel: float = 1e-3) -> float:
    """max |got - want| relative to max |want| (asserted <= ``rel``); returns it."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-6))
    assert err <= rel, f"relative error {err:.2e} > {rel:.0e}"
    return err


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    path = write_reference_checkpoint(tmp_path_factory.mktemp("edgetam"))
    return build_video_predictor(path)


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    source = shared_data("videos/bedroom", pattern="00030.jpg")
    out = tmp_path_factory.mktemp("frames")
    for i, index in enumerate(SOURCE_FRAMES):
        Image.open(source / f"{index:05d}.jpg").convert("RGB").resize(SIZE).save(out / f"{i:05d}.jpg", quality=95)
    return out


@pytest.fixture(scope="module")
def exported(predictor, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    report = export_edgetam(predictor, out)
    return out, report


@pytest.fixture(scope="module")
def tracker(exported):
    return OnnxTracker(exported[0], threads=1)


@pytest.fixture(scope="module")
def frame0(predictor, frames, tracker):
    """Frame 0 through sam2 (``init_state``'s image and ``forward_image``) and through the ONNX encoder."""
    state = predictor.init_state(video_path=str(frames))
    image = state["images"][0:1].float()
    with torch.inference_mode():
        ours = predictor.forward_image(image)
    onnx = tracker.encode_image(image.numpy())
    return state, image, ours, onnx


def test_export_writes_four_checked_graphs_and_the_spec(exported):
    out, report = exported
    assert report["passed"] and set(report["files"]) == set(FILES)
    for name, entry in report["files"].items():
        assert Path(entry["path"]).is_file() and entry["passed"], name
    spec = json.loads((out / SPEC_NAME).read_text())
    attention = spec["graphs"]["memory_attention"]["inputs"]
    assert attention["memory"]["shape"] == ["objects", 7, 512, 64]
    assert attention["object_pointers"]["shape"] == ["objects", 16, 256]
    assert attention["features"]["shape"] == [1, 256, 64, 64]       # the frame's, once for every object
    assert spec["graphs"]["prompt_decoder"]["inputs"]["point_coords"]["shape"] == ["objects", "num_points", 2]
    assert spec["objects_axis"] is True
    for name in ("prompt_decoder", "memory_encoder", "memory_attention"):   # checked for three objects at once
        assert set(report["files"][name]["objects_axis"]) == set(NAMES[name][1]), name
    assert len(spec["constants"]["no_memory_embedding"]) == 256


def test_loop_preprocessing_equals_the_predictor_s(frame0, frames, tracker):
    from repvit.edgetam.onnx_predictor import load_frame
    _, image, _, _ = frame0
    x, size = load_frame(frames / "00000.jpg", 1024, tracker.spec["preprocessing"]["mean"],
                         tracker.spec["preprocessing"]["std"])
    assert size == (SIZE[1], SIZE[0])
    assert np.abs(x - image.numpy()).max() < 1e-6


def test_image_encoder_graph_equals_forward_image(frame0):
    _, _, ours, onnx = frame0
    close(onnx["high_res_0"], ours["backbone_fpn"][0])
    close(onnx["high_res_1"], ours["backbone_fpn"][1])
    close(onnx["features"], ours["backbone_fpn"][2])
    close(onnx["features_pos"], ours["vision_pos_enc"][2], rel=1e-5)


@pytest.mark.parametrize("prompt", ["click", "box", "click + previous mask"])
def test_prompt_decoder_graph_equals_forward_sam_heads(predictor, frame0, tracker, prompt):
    _, _, ours, onnx = frame0
    coords, labels = tracker.prompt_arrays(None if prompt == "box" else [CLICK],
                                           None, BOX if prompt == "box" else None, (SIZE[1], SIZE[0]))
    multimask = use_multimask(tracker.spec["choice"], labels.shape[1], prompted=True)
    assert multimask == (prompt != "box")   # one click: best of three; a box: stability choice
    previous = None
    if prompt.endswith("mask"):   # a correction feeds the frame's earlier logits back (a box-shaped blob here)
        previous = np.full((1, 1, 256, 256), -8.0, np.float32)
        previous[..., 40:150, 30:90] = 8.0
    with torch.inference_mode():
        embed = ours["backbone_fpn"][2] + predictor.no_mem_embed.reshape(1, -1, 1, 1)
        out = predictor._forward_sam_heads(
            backbone_features=embed, point_inputs={"point_coords": torch.from_numpy(coords),
                                                   "point_labels": torch.from_numpy(labels).int()},
            mask_inputs=None if previous is None else torch.from_numpy(previous),
            high_res_features=ours["backbone_fpn"][:2], multimask_output=multimask)
    feats = {"high_res_0": ours["backbone_fpn"][0].numpy(), "high_res_1": ours["backbone_fpn"][1].numpy()}
    mask, pointer = tracker.decode(embed.numpy(), feats, coords, labels, multimask, mask_input=previous)
    close(mask, out[3], rel=2e-3)
    close(pointer, out[5], rel=2e-3)
    assert 0.02 < (mask > 0).mean() < 0.9   # a real mask, not a constant
    if previous is not None:   # the mask input is used, not ignored
        plain, _ = tracker.decode(embed.numpy(), feats, coords, labels, multimask)
        assert np.abs(plain - mask).max() > 0.1
    else:
        score = tracker.run("prompt_decoder", image_embed=embed.numpy(), **feats, point_coords=coords,
                            point_labels=labels, mask_input=np.zeros((1, 1, 256, 256), np.float32),
                            has_mask_input=np.zeros(1, np.float32))[3]
        close(score, out[6], rel=2e-3)


@pytest.mark.parametrize("from_points", [True, False])
def test_memory_encoder_graph_equals_encode_new_memory(predictor, frame0, tracker, from_points):
    _, _, ours, onnx = frame0
    gen = torch.Generator().manual_seed(1)
    low = torch.randn(1, 1, 256, 256, generator=gen) * 6
    feats = ours["backbone_fpn"][2]
    with torch.inference_mode():
        memory, encodings = predictor._encode_new_memory(
            current_vision_feats=[feats.flatten(2).permute(2, 0, 1)], feat_sizes=[(64, 64)],
            pred_masks_high_res=F.interpolate(low, size=(1024, 1024), mode="bilinear", align_corners=False),
            object_score_logits=torch.ones(1, 1), is_mask_from_pts=from_points)
    got = tracker.encode_memory({"features": feats.numpy()}, low.numpy(), np.zeros((1, 256), np.float32), from_points)
    close(got.memory, memory.flatten(2).transpose(1, 2), rel=1e-2)   # bfloat16 storage: 2^-8 relative
    close(got.memory_pos, encodings[0].flatten(2).transpose(1, 2), rel=1e-5)


@pytest.mark.parametrize("frame, num_frames", [(3, 4), (20, 30)])
def test_memory_attention_graph_equals_prepare_memory_conditioned_features(predictor, frame0, tracker, frame,
                                                                           num_frames):
    """Frame ``frame`` with the prompted frame 0 and every frame since tracked, the bank chosen by the loop's
    rules and by sam2's: frame 3 fills 3 of 7 memory slots and 3 of 16 pointer slots; frame 20 fills all
    (frames 14-19 of 1-19 as memories, 5-19 as pointers)."""
    _, _, ours, onnx = frame0
    gen = torch.Generator().manual_seed(2)
    pos = onnx_pos(tracker, onnx)
    bank = {t: Memory(round_to_bfloat16(torch.randn(1, 512, 64, generator=gen).numpy()), pos,
                      torch.randn(1, 256, generator=gen).numpy()) for t in range(frame)}

    def entry(m):
        as_map = lambda a: torch.from_numpy(a).transpose(1, 2).unsqueeze(-1)   # noqa: E731 (sam2's (B, C, N, 1))
        return {"maskmem_features": as_map(m.memory).to(torch.bfloat16), "maskmem_pos_enc": [as_map(m.memory_pos)],
                "obj_ptr": torch.from_numpy(m.pointer)}
    output_dict = {"cond_frame_outputs": {0: entry(bank[0])},
                   "non_cond_frame_outputs": {t: entry(bank[t]) for t in range(1, frame)}}
    feats = ours["backbone_fpn"][2]
    with torch.inference_mode():
        want = predictor._prepare_memory_conditioned_features(
            frame_idx=frame, is_init_cond_frame=False, current_vision_feats=[feats.flatten(2).permute(2, 0, 1)],
            current_vision_pos_embeds=[ours["vision_pos_enc"][2].flatten(2).permute(2, 0, 1)], feat_sizes=[(64, 64)],
            output_dict=output_dict, num_frames=num_frames)
    current = {"features": feats.numpy(), "features_pos": ours["vision_pos_enc"][2].numpy()}
    tracked = {t: bank[t] for t in range(1, frame)}
    got = tracker.condition(current, frame, {0: bank[0]}, tracked, num_frames)
    close(got, want, rel=2e-3)
    if frame == 3:
        without = tracker.condition(current, frame, {0: bank[0]}, {2: bank[2]}, num_frames)
        assert np.abs(without - got).max() > 1e-2   # the masked slot's memory matters when it is present
    else:
        with pytest.raises(ValueError, match="memory and 17 pointer slots"):   # one pointer more than exported
            tracker.condition(current, frame, {0: bank[0], 1: bank[1]}, tracked, num_frames)


def onnx_pos(tracker, onnx):
    """The memory encoder's (content-independent) latent position encoding."""
    out = tracker.run("memory_encoder", features=onnx["features"], mask_logits=np.zeros((1, 1, 256, 256), np.float32),
                      from_points=np.zeros(1, np.float32))
    return out[1]


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_onnx_loop_tracks_like_propagate_in_video(predictor, frame0, frames, tracker, exported, runtime):
    if runtime == "openvino":   # the same ONNX files, compiled by OpenVINO
        pytest.importorskip("openvino", reason="the deploy extra is not installed")
        tracker = OnnxTracker(exported[0], threads=1, runtime="openvino")
    state = frame0[0]
    with torch.inference_mode():
        predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1, points=np.array([CLICK], np.float32),
                                        labels=np.array([1], np.int32))
        want = {t: logits[0, 0].numpy() for t, _, logits in predictor.propagate_in_video(state)}
    got = tracker.track(frames, points=[CLICK], labels=[1])
    assert sorted(got) == sorted(want) == list(range(len(SOURCE_FRAMES)))
    for t in want:
        a, b = got[t] > 0, want[t] > 0
        assert a.shape == (SIZE[1], SIZE[0])
        assert 100 < b.sum() < 0.9 * b.size, f"frame {t}: the reference mask has {b.sum()} pixels"
        iou = (a & b).sum() / (a | b).sum()
        print(f"frame {t}: {b.sum()} pixels, IoU {iou:.5f}, max |logit diff| {np.abs(got[t] - want[t]).max():.2e}")
        assert iou >= 0.99, f"frame {t}: IoU {iou:.4f} between the ONNX loop and propagate_in_video"
        close(got[t], want[t], rel=1e-4)   # the logits too (measured: ~1e-5 absolute on logits of tens)
    assert (want[0] > 0).sum() != (want[3] > 0).sum()   # the object moves: later frames are not copies


def test_onnx_loop_tracks_two_objects_prompted_on_different_frames_like_the_predictor(predictor, frames, tracker):
    """Two objects in one pass (a click on frame 0, a box on frame 1), against one sam2 state holding both:
    each object keeps its own memory, and the boxed one is tracked on frame 0 from its later prompt."""
    state = predictor.init_state(video_path=str(frames))
    with torch.inference_mode():
        predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1, points=np.array([CLICK], np.float32),
                                        labels=np.array([1], np.int32))
        predictor.add_new_points_or_box(state, frame_idx=1, obj_id=5, box=np.array(BOX, np.float32))
        want = {t: {o: logits[i, 0].numpy() for i, o in enumerate(ids)}
                for t, ids, logits in predictor.propagate_in_video(state)}
    seen = []
    got = tracker.track_objects(frames, [{"obj_id": 1, "frame": 0, "points": [CLICK], "labels": [1]},
                                         {"obj_id": 5, "frame": 1, "box": BOX}],
                                on_frame=lambda t, masks: seen.append((t, sorted(masks))))
    assert seen == [(t, [1, 5]) for t in range(len(SOURCE_FRAMES))] and sorted(got) == sorted(want)
    for t in want:
        for obj in (1, 5):
            a, b = got[t][obj] > 0, want[t][obj] > 0
            iou = (a & b).sum() / max((a | b).sum(), 1)
            print(f"frame {t} object {obj}: {b.sum()} pixels, IoU {iou:.5f}")
            assert b.sum() > 50 and iou >= 0.99, f"frame {t}, object {obj}: IoU {iou:.4f}"
    # two objects, not one answer twice: on the boxed frame the box's mask is far larger than the click's
    assert (want[1][5] > 0).sum() > 10 * (want[1][1] > 0).sum()
    with pytest.raises(ValueError, match="two prompts on frame 0"):
        tracker.track_objects(frames, [{"obj_id": 1, "frame": 0, "points": [CLICK]},
                                       {"obj_id": 1, "frame": 0, "box": BOX}])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_onnx_loop_corrects_a_tracked_frame_like_the_predictor(predictor, frames, tracker):
    """sam2's interactive loop step by step: a click, propagation, a click that corrects tracked frame 2, and
    propagation again (frame 2 keeps the correction, frame 3 remembers it), against one sam2 state."""
    state, ours = predictor.init_state(video_path=str(frames)), tracker.init_state(frames)
    with torch.inference_mode():
        predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1, points=np.array([CLICK], np.float32),
                                        labels=np.array([1], np.int32))
        before = {t: logits[0, 0].numpy() for t, _, logits in predictor.propagate_in_video(state)}
    fix = ((BOX[0] + BOX[2]) / 2, (BOX[1] + BOX[3]) / 2)   # on the boy: "this belongs to the object too"
    assert before[2][int(fix[1]), int(fix[0])] < 0
    with torch.inference_mode():
        _, _, fixed = predictor.add_new_points_or_box(state, frame_idx=2, obj_id=1,
                                                      points=np.array([fix], np.float32),
                                                      labels=np.array([1], np.int32))
        after = {t: logits[0, 0].numpy() for t, _, logits in predictor.propagate_in_video(state)}
    tracker.add_new_points_or_box(ours, 0, 1, points=[CLICK], labels=[1])
    got_before = {t: masks[0, 0] for t, _, masks in tracker.propagate_in_video(ours)}
    t, ids, got_fixed = tracker.add_new_points_or_box(ours, 2, 1, points=[fix], labels=[1])
    assert (t, ids, got_fixed.shape) == (2, [1], (1, 1, SIZE[1], SIZE[0]))
    got_after = {t: masks[0, 0] for t, _, masks in tracker.propagate_in_video(ours)}
    print("correction IoU", iou(got_fixed[0, 0], fixed[0, 0].numpy()),
          {t: (iou(got_after[t], after[t]), iou(before[t], after[t])) for t in after})
    assert iou(got_fixed[0, 0], fixed[0, 0].numpy()) >= 0.99
    for t in before:
        assert iou(got_before[t], before[t]) >= 0.99 and iou(got_after[t], after[t]) >= 0.99, t
    assert np.array_equal(after[2] > 0, fixed[0, 0].numpy() > 0)   # the correction is kept ...
    assert iou(before[2], after[2]) < 0.9   # ... and it changed the mask (seeded weights: not semantically)
    assert iou(before[3], after[3]) < 0.95   # the next frame remembers it
    assert np.array_equal(after[1] > 0, before[1] > 0)   # earlier frames are untouched
    with pytest.raises(ValueError, match="prompted frame of object 1 and was propagated"):
        tracker.add_new_points_or_box(ours, 0, 1, points=[fix], labels=[1])


def test_onnx_loop_tracks_backward_from_a_later_prompt_like_the_predictor(predictor, frames, tracker):
    """A box on frame 2: forward to frame 3, then backward to frame 0 (memories of the frames after), then a
    correction of frame 1, which was tracked backward and is conditioned backward."""
    state, ours = predictor.init_state(video_path=str(frames)), tracker.init_state(frames)
    want, got, seen = {}, {}, []
    with torch.inference_mode():
        predictor.add_new_points_or_box(state, frame_idx=2, obj_id=3, box=np.array(BOX, np.float32))
        tracker.add_new_points_or_box(ours, 2, 3, box=BOX)
        for reverse in (False, True):
            for t, _, logits in predictor.propagate_in_video(state, reverse=reverse):
                want.setdefault(t, logits[0, 0].numpy())
            for t, _, masks in tracker.propagate_in_video(ours, reverse=reverse):
                seen.append(t)
                got.setdefault(t, masks[0, 0])
    assert seen == [2, 3, 2, 1, 0] and sorted(got) == sorted(want) == [0, 1, 2, 3]
    for t in want:
        print(f"frame {t}: IoU {iou(got[t], want[t]):.5f}")
        assert (want[t] > 0).sum() > 50 and iou(got[t], want[t]) >= 0.99, t
    assert ours.objects[3].visited == {2: True, 3: False, 1: True, 0: True}
    with torch.inference_mode():
        _, _, fixed = predictor.add_new_points_or_box(state, frame_idx=1, obj_id=3, points=np.array([CLICK]),
                                                      labels=np.array([1]))
    _, _, got_fixed = tracker.add_new_points_or_box(ours, 1, 3, points=[CLICK], labels=[1])
    bank = (ours.features(1, tracker)[0], 1, ours.objects[3].cond, ours.objects[3].tracked, 4)
    assert np.abs(tracker.condition(*bank) - tracker.condition(*bank, reverse=True)).max() > 1e-2   # direction matters
    assert iou(got_fixed[0, 0], fixed[0, 0].numpy()) >= 0.99
    # track() runs both passes itself: every frame once, forward first
    order = []
    logits = tracker.track(frames, box=BOX, frame=2, on_frame=lambda t, m: order.append(t))
    assert order == [2, 3, 1, 0] and all(np.array_equal(logits[t], got[t]) for t in got)


def test_onnx_loop_refines_a_prompt_before_propagation_like_the_predictor(predictor, frames, tracker):
    """Two calls on the same frame before propagating: the second click is decoded with the first mask."""
    state, ours = predictor.init_state(video_path=str(frames)), tracker.init_state(frames)
    second = ((BOX[0] + BOX[2]) / 2, (BOX[1] + BOX[3]) / 2)
    with torch.inference_mode():
        _, _, first = predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1, points=np.array([CLICK]),
                                                      labels=np.array([1]))
        _, _, want = predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1, points=np.array([second]),
                                                     labels=np.array([1]))
    tracker.add_new_points_or_box(ours, 0, 1, points=[CLICK], labels=[1])
    _, _, got = tracker.add_new_points_or_box(ours, 0, 1, points=[second], labels=[1])
    print("refinement IoU", iou(got[0, 0], want[0, 0].numpy()),
          "vs first", iou(first[0, 0].numpy(), want[0, 0].numpy()))
    assert iou(got[0, 0], want[0, 0].numpy()) >= 0.99
    close(got[0, 0], want[0, 0].numpy(), rel=1e-3)
    fresh = tracker.init_state(frames)   # without the first mask the same click decodes differently
    _, _, alone = tracker.add_new_points_or_box(fresh, 0, 1, points=[second], labels=[1])
    assert np.abs(alone - got).max() > 0.1


def test_numpy_helpers_match_torch():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 1, 256, 256, generator=gen) * 5
    for h, w in ((180, 320), (540, 960), (256, 256), (97, 301)):
        want = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
        # float32 rounding of the weights only (a wrong sampling grid is off by whole units)
        assert np.abs(resize_bilinear(x[0, 0].numpy(), h, w) - want).max() < 1e-5 * np.abs(want).max()
    y = torch.randn(1000, generator=gen) * 100
    assert np.array_equal(round_to_bfloat16(y.numpy()), y.to(torch.bfloat16).float().numpy())
    for (h, w), (oh, ow) in (((180, 320), (1024, 1024)), ((1080, 1920), (1024, 1024)), ((1024, 1024), (256, 256)),
                             ((97, 301), (40, 600))):      # up, down in one axis, down by 4, mixed
        z = torch.randn(1, 1, h, w, generator=gen) * 10
        want = F.interpolate(z, size=(oh, ow), mode="bilinear", align_corners=False, antialias=True)[0, 0].numpy()
        assert np.abs(resize_antialiased(z[0, 0].numpy(), oh, ow) - want).max() < 1e-4 * np.abs(want).max()


def test_tracker_refuses_what_it_cannot_do(tracker, frames, tmp_path, predictor, exported):
    with pytest.raises(ValueError, match="frames 0-3"):
        tracker.track(frames, points=[CLICK], frame=4)
    with pytest.raises(ValueError, match="1 points but 2 labels"):
        tracker.track(frames, points=[CLICK], labels=[1, 0])
    with pytest.raises(FileNotFoundError, match=SPEC_NAME):
        OnnxTracker(tmp_path)
    with pytest.raises(ValueError, match="onnxruntime, openvino"):
        OnnxTracker(exported[0], runtime="tvm")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="existing file"):
        export_edgetam(predictor, tmp_path / "file")


def test_coreml_programs_carry_the_graphs_tensors_and_the_loop_spec(predictor, exported, tmp_path):
    """The four graphs as Core ML programs: the ONNX graphs' input/output names and shapes (the decoder's
    points a flexible 1-16 axis), the same loop description; outputs compared where Core ML runs (macOS)."""
    pytest.importorskip("coremltools", reason="the coreml extra is not installed")
    import platform
    from repvit.export.coreml import tensor_spec
    from repvit.edgetam.export_coreml import COREML_FILES, COREML_SPEC_NAME, export_edgetam_coreml
    report = export_edgetam_coreml(predictor, tmp_path / "coreml")
    assert sorted(p.name for p in (tmp_path / "coreml").iterdir()) == sorted([*COREML_FILES.values(),
                                                                              COREML_SPEC_NAME])
    assert report["compared"] == (platform.system() == "Darwin")
    onnx_spec = json.loads((exported[0] / SPEC_NAME).read_text())
    spec = json.loads((tmp_path / "coreml" / COREML_SPEC_NAME).read_text())
    for name in FILES:
        program = tensor_spec(tmp_path / "coreml" / COREML_FILES[name])
        onnx_io = onnx_spec["graphs"][name]
        assert list(program["inputs"]) == list(onnx_io["inputs"]), name
        assert set(program["outputs"]) == set(onnx_io["outputs"]), name
        for n, i in onnx_io["inputs"].items():
            if "num_points" not in i["shape"]:   # Core ML programs take one object: the objects axis is 1 there
                one = [1 if d == "objects" else d for d in i["shape"]]
                assert program["inputs"][n] == one == spec["graphs"][name]["inputs"][n]["shape"], (name, n)
    decoder = tensor_spec(tmp_path / "coreml" / COREML_FILES["prompt_decoder"])["inputs"]
    assert decoder["point_coords"] == [[1, 1], [1, 16], [2, 2]] and decoder["point_labels"] == [[1, 1], [1, 16]]
    assert spec["format"] == "repvit-edgetam-coreml" and spec["files"] == COREML_FILES
    assert "objects_axis" not in spec and onnx_spec["objects_axis"] is True
    for key in ("memory_bank", "choice", "constants", "preprocessing", "image_size"):
        assert spec[key] == onnx_spec[key], key


# ---------------------------------------------------------------------------------- the stream over the graphs
def stream_frames(frames: Path) -> list:
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(frames.glob("*.jpg"))]


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_the_onnx_stream_tracks_like_propagate_in_video(predictor, frames, exported, runtime):
    """Frame by frame over the graphs, two objects prompted on frame 0: sam2's whole-video masks (IoU >= 0.99 of
    real masks, logits within the graphs' tolerance), in both runtimes."""
    from repvit.edgetam.onnx_stream import OnnxStreamingTracker
    if runtime == "openvino":
        pytest.importorskip("openvino", reason="the deploy extra is not installed")
    state = predictor.init_state(video_path=str(frames))
    with torch.inference_mode():
        predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1, points=np.array([CLICK], np.float32),
                                        labels=np.array([1], np.int32))
        predictor.add_new_points_or_box(state, frame_idx=0, obj_id=2, box=np.array(BOX, np.float32))
        want = {t: logits[:, 0].numpy() for t, _, logits in predictor.propagate_in_video(state)}
    stream = OnnxStreamingTracker(exported[0], threads=1, runtime=runtime)
    for t, frame in enumerate(stream_frames(frames)):
        out = stream.step(frame)
        if t == 0:
            stream.add_new_points_or_box(1, points=[CLICK], labels=[1])
            out = stream.add_new_points_or_box(2, box=BOX)
        assert out.frame == t and out.object_ids == [1, 2]
        for i in range(2):
            b = want[t][i] > 0
            assert 50 < b.sum() < 0.9 * b.size, f"frame {t}, object {i + 1}: the reference has {b.sum()} pixels"
            assert iou(out.logits[i], want[t][i]) >= 0.99, (t, i)
            close(out.logits[i], want[t][i], rel=1e-4)


def test_the_onnx_stream_equals_the_onnx_loop_and_keeps_only_its_windows(exported, frames, tmp_path):
    """Nine frames with the bank's reach shrunk (2 memories, 3 pointers back) in both loops: the stream's
    logits are the whole-video loop's to the last bit, while it holds only the frames in its windows."""
    from repvit.edgetam.onnx_stream import OnnxStreamingTracker
    from repvit.edgetam.streaming import MemoryWindows
    clip = tmp_path / "clip"
    clip.mkdir()
    images = stream_frames(frames)
    for i in range(9):   # the four frames there and back: the bank's windows fill and slide
        Image.fromarray(images[[0, 1, 2, 3, 2, 1, 0, 1, 2][i]]).save(clip / f"{i:05d}.jpg", quality=95)
    loop = OnnxTracker(exported[0], threads=1)
    stream = OnnxStreamingTracker(exported[0], threads=1)
    for rules in (loop.bank_rules, stream.graphs.bank_rules):   # both loops read 2 memories and 3 pointers back
        rules["num_maskmem"], rules["max_obj_ptrs_in_encoder"] = 3, 4
    stream.windows = MemoryWindows(memories=2, pointers=3, max_cond_frames=1)
    want = loop.track_objects(clip, [{"obj_id": 7, "frame": 0, "box": BOX}])
    for t, image in enumerate(stream_frames(clip)):
        out = stream.step(image)
        if t == 0:
            out = stream.add_new_points_or_box(7, box=BOX)
        np.testing.assert_array_equal(out.logit(7), want[t][7])
        assert out.mask(7).sum() > 50
    assert stream.held_frames() == {7: {"cond": [0], "tracked": [5, 6, 7, 8], "with_memory": [6, 7, 8]}}


def test_the_onnx_stream_runs_every_object_of_a_frame_in_one_call_per_graph(exported, frames):
    """Three objects: one call of each graph per frame (the frame's first self-attention computed once), and the
    same masks as one call per object (graphs of an older release), to float tolerance."""
    from repvit.edgetam.onnx_stream import OnnxStreamingTracker
    images = stream_frames(frames)[:3]
    prompts = {1: dict(points=[CLICK], labels=[1]), 2: dict(box=BOX), 3: dict(box=(20, 30, 140, 160))}
    outputs, calls = {}, {}
    for batched in (True, False):
        stream = OnnxStreamingTracker(exported[0], threads=1)
        stream.graphs.batched = batched
        count = {name: 0 for name in stream.graphs.runners}
        outputs[batched] = []
        with stream.graphs.watch(lambda name, feed, seconds: count.update({name: count[name] + 1})):
            for t, image in enumerate(images):
                out = stream.step(image)
                if t == 0:
                    for obj_id, prompt in prompts.items():
                        out = stream.add_new_points_or_box(obj_id, **prompt)
                    count.update({name: 0 for name in count})
                outputs[batched].append(out)
        calls[batched] = dict(count)
    assert calls[True] == {name: 2 for name in calls[True]}, calls[True]            # frames 1 and 2, all objects
    assert calls[False]["memory_attention"] == 6 and calls[False]["image_encoder"] == 2, calls[False]
    for one, each in zip(outputs[True][1:], outputs[False][1:]):
        assert one.object_ids == each.object_ids == [1, 2, 3]
        for i in range(3):
            assert each.masks[i].sum() > 50, (one.frame, i)
            assert iou(one.logits[i], each.logits[i]) >= 0.999
            close(one.logits[i], each.logits[i], rel=1e-4)


def ellipse(size: tuple, centre: tuple, axes: tuple) -> np.ndarray:
    """A filled ellipse as an HxW bool mask (``size`` is (width, height))."""
    ys, xs = np.mgrid[:size[1], :size[0]]
    return ((xs - centre[0]) / axes[0]) ** 2 + ((ys - centre[1]) / axes[1]) ** 2 <= 1


GIRL, BOY = ellipse(SIZE, (133, 80), (22, 40)), ellipse(SIZE, (73, 90), (20, 45))


@pytest.fixture(scope="module")
def mask_reference(predictor, frames) -> tuple:
    """sam2 on masks drawn by hand (ellipses, not shapes the model would make): ``add_new_mask`` for two
    objects on frame 0 + ``propagate_in_video``; and the PyTorch stream (sam2's own correction) with a box on
    frame 0 whose object is corrected to the girl's mask on frame 2."""
    from repvit.edgetam.stream_torch import TorchStreamingTracker
    state = predictor.init_state(video_path=str(frames))
    with torch.inference_mode():
        predictor.add_new_mask(state, frame_idx=0, obj_id=1, mask=torch.from_numpy(GIRL))
        predictor.add_new_mask(state, frame_idx=0, obj_id=2, mask=torch.from_numpy(BOY))
        whole = {t: logits[:, 0].numpy() for t, _, logits in predictor.propagate_in_video(state)}
    return whole, corrected_stream(TorchStreamingTracker(predictor), stream_frames(frames))


def corrected_stream(tracker, images: list) -> list:
    outputs = []
    for t, frame in enumerate(images):
        out = tracker.step(frame)
        if t == 0:
            out = tracker.add_new_points_or_box(1, box=BOX)
        if t == 2:
            out = tracker.add_new_mask(1, GIRL)       # the tracked boy corrected to the girl's mask
        outputs.append(out)
    return outputs


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_the_onnx_stream_takes_mask_prompts_as_sam2_does(mask_reference, frames, exported, runtime):
    """Mask prompts over the graphs: two objects' masks on frame 0 track as sam2's ``add_new_mask`` +
    ``propagate_in_video``; a mask correction on a tracked frame equals the PyTorch stream's."""
    from repvit.edgetam.onnx_stream import OnnxStreamingTracker
    if runtime == "openvino":
        pytest.importorskip("openvino", reason="the deploy extra is not installed")
    whole, torch_stream = mask_reference
    stream = OnnxStreamingTracker(exported[0], threads=1, runtime=runtime)
    images = stream_frames(frames)
    for t, frame in enumerate(images):
        out = stream.step(frame)
        if t == 0:
            stream.add_new_mask(1, GIRL)
            out = stream.add_new_mask(2, BOY)
        for i in range(2):
            b = whole[t][i] > 0
            assert 50 < b.sum() < 0.9 * b.size, f"frame {t}, object {i + 1}: the reference has {b.sum()} pixels"
            assert iou(out.logits[i], whole[t][i]) >= 0.99, (t, i)
            close(out.logits[i], whole[t][i], rel=1e-3)
    ours = corrected_stream(OnnxStreamingTracker(exported[0], threads=1, runtime=runtime), images)
    for t, (mine, theirs) in enumerate(zip(ours, torch_stream)):
        assert theirs.mask(1).sum() > 50 and iou(mine.logit(1), theirs.logit(1)) >= 0.99, t
        close(mine.logit(1), theirs.logit(1), rel=1e-3)
    assert iou(ours[2].logit(1), GIRL * 20.0 - 10) >= 0.97     # on its frame the mask prompt is the output
