"""The streaming tracker in PyTorch: frame by frame it computes what sam2's ``propagate_in_video`` computes
on the whole video (one object and two, exactly), it keeps only the memory the model reads, and its
corrections, late objects, removal and reset behave as sam2's video API does on the same frames.

The weights are the reference's seeded ones (tests/test_edgetam.py shows them equal to the official code),
whose object scores are positive on these frames: every comparison below is of real, non-empty masks
(``nonempty`` fails the test otherwise). The memory windows are shrunk (3 memories, 4 pointers) so that
nine frames exercise them; the full windows are the same code with larger numbers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("sam2", reason="EdgeTAM needs the edgetam extra (Meta's sam2)")

from repvit.edgetam import build_video_predictor  # noqa: E402
from repvit.edgetam.stream_torch import TorchStreamingTracker  # noqa: E402

from .conftest import shared_data  # noqa: E402
from .test_edgetam import write_reference_checkpoint  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:cannot import name '_C':UserWarning",
                                        "ignore:.*post-processing.*:UserWarning")
SIZE = (320, 180)
FRAMES = 9
BOXES = ((20, 20, 150, 170), (180, 10, 300, 120))
CLICK = ((240.0, 60.0),)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    path = write_reference_checkpoint(tmp_path_factory.mktemp("edgetam"))
    model = build_video_predictor(path, fused=True)
    model.num_maskmem, model.max_obj_ptrs_in_encoder = 3, 4     # windows that nine frames exercise
    return model


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """Nine bedroom frames at 320x180 as the JPEG folder sam2 reads; the stream gets the same decoded pixels."""
    source = shared_data("videos/bedroom", pattern="00040.jpg")
    folder = tmp_path_factory.mktemp("clip")
    for i in range(FRAMES):
        Image.open(source / f"{5 * i:05d}.jpg").convert("RGB").resize(SIZE).save(folder / f"{i:05d}.jpg", quality=95)
    return folder


def frames_of(clip: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(clip.glob("*.jpg"))]


def nonempty(logits: np.ndarray) -> np.ndarray:
    masks = logits > 0
    areas = masks.reshape(len(masks), -1).sum(1)
    assert (areas > 0).all() and (areas < masks[0].size).all(), f"a mask is empty or full: areas {areas}"
    return masks


def offline(predictor, clip: Path, objects: dict) -> dict:
    """``{frame: NxHxW logits}`` of sam2's whole-video API with ``objects`` prompted on frame 0."""
    state = predictor.init_state(str(clip))
    for obj, prompt in objects.items():
        predictor.add_new_points_or_box(state, frame_idx=0, obj_id=obj, **prompt)
    return {t: masks[:, 0].numpy() for t, _, masks in predictor.propagate_in_video(state)}


def streamed(predictor, frames, objects: dict, tracker=None) -> dict:
    tracker = tracker or TorchStreamingTracker(predictor)
    out = {}
    for t, frame in enumerate(frames):
        result = tracker.step(frame)
        if t == 0:
            for obj, prompt in objects.items():
                result = tracker.add_new_points_or_box(obj, **prompt)
        assert result.frame == t and result.object_ids == list(objects)
        out[t] = result.logits
    return out


TWO = {1: {"box": BOXES[0]}, 2: {"points": CLICK, "labels": (1,)}}


@pytest.fixture(scope="module")
def two_objects(predictor, clip):
    tracker = TorchStreamingTracker(predictor)
    return offline(predictor, clip, TWO), streamed(predictor, frames_of(clip), TWO, tracker), tracker


@pytest.mark.parametrize("objects", ["one", "two"])
def test_the_stream_equals_propagate_in_video(predictor, clip, two_objects, objects):
    if objects == "one":
        one = {1: {"box": BOXES[0]}}
        reference, stream = offline(predictor, clip, one), streamed(predictor, frames_of(clip), one)
    else:
        reference, stream, _ = two_objects
    assert sorted(stream) == sorted(reference) == list(range(FRAMES))
    for t in range(FRAMES):
        assert stream[t].shape == reference[t].shape == (len(stream[t]), SIZE[1], SIZE[0])
        np.testing.assert_allclose(stream[t], reference[t], atol=1e-4, rtol=0)
        assert (nonempty(stream[t]) == nonempty(reference[t])).all()     # IoU 1.0, of real masks


def test_the_stream_keeps_only_what_the_model_reads(two_objects):
    _, _, tracker = two_objects
    last = FRAMES - 1
    # the current frame's correction and the next frame read 2 memories (num_maskmem - 1) and 3 pointers
    # (max_obj_ptrs_in_encoder - 1) back from themselves
    expected = {"cond": [0], "tracked": [last - 3, last - 2, last - 1, last],
                "with_memory": [last - 2, last - 1, last]}
    assert tracker.held_frames() == {1: expected, 2: expected}
    state = tracker.state
    assert list(state["cached_features"]) == [last] and tracker._images.index == last
    assert all(not d or max(d) == last for d in state["frames_tracked_per_obj"].values())
    assert all(not d for d in state["point_inputs_per_obj"].values())     # prompts of frame 0 are gone


def test_a_correction_on_the_current_frame_is_sam2s_correction(predictor, clip):
    """Clicking on a tracked frame of the stream gives the mask sam2 gives for the same click on the same
    frame of a video tracked up to it, and from then on the stream tracks the corrected object."""
    frames, at, click = frames_of(clip), 4, {"points": ((60.0, 100.0),), "labels": (0,)}
    state = predictor.init_state(str(clip))
    predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1, box=BOXES[0])
    for _ in predictor.propagate_in_video(state, max_frame_num_to_track=at):
        pass
    _, _, expected = predictor.add_new_points_or_box(state, frame_idx=at, obj_id=1, **click)

    tracker = TorchStreamingTracker(predictor)
    before = None
    for t in range(at + 1):
        out = tracker.step(frames[t])
        if t == 0:
            tracker.add_new_points_or_box(1, box=BOXES[0])
        before = out.logits
    corrected = tracker.add_new_points_or_box(1, **click)
    np.testing.assert_allclose(corrected.logits, expected[:, 0].numpy(), atol=1e-4, rtol=0)
    assert (nonempty(corrected.logits) != nonempty(before)).any()      # the click changed the mask
    after = tracker.step(frames[at + 1])
    plain = streamed(predictor, frames[:at + 2], {1: {"box": BOXES[0]}})
    assert not np.allclose(after.logits, plain[at + 1], atol=1e-3)     # the correction is in the memory


def test_late_objects_removal_and_reset(predictor, clip):
    frames = frames_of(clip)
    alone = streamed(predictor, frames[:5], {1: {"box": BOXES[0]}})
    tracker = TorchStreamingTracker(predictor)
    tracker.step(frames[0])
    tracker.add_new_points_or_box(1, box=BOXES[0])
    for t in (1, 2):
        tracker.step(frames[t])
    late = tracker.add_new_points_or_box(2, box=BOXES[1])           # object 2 starts on frame 2
    assert late.object_ids == [1, 2]
    np.testing.assert_allclose(late.logits[0], alone[2][0], atol=1e-4, rtol=0)   # object 1 untouched
    nonempty(late.logits)
    for t in (3, 4):
        out = tracker.step(frames[t])
        np.testing.assert_allclose(out.logit(1), alone[t][0], atol=1e-4, rtol=0)  # objects are independent
        nonempty(out.logits)
    assert tracker.held_frames()[2]["cond"] == [2]
    tracker.remove_object(1)
    out = tracker.step(frames[5])
    assert out.object_ids == [2] and list(tracker.held_frames()) == [2]
    with pytest.raises(ValueError, match="no object 1 in the stream; objects: \\[2\\]"):
        tracker.remove_object(1)
    tracker.reset_state()
    out = tracker.step(frames[0])
    assert out.frame == 0 and out.object_ids == [] and out.logits.shape == (0, SIZE[1], SIZE[0])


def test_bad_input_is_refused_with_what_to_do(predictor, clip):
    frame = frames_of(clip)[0]
    tracker = TorchStreamingTracker(predictor)
    with pytest.raises(RuntimeError, match="call step\\(frame\\) first"):
        tracker.add_new_points_or_box(1, points=[(10, 10)])
    with pytest.raises(ValueError, match="uint8"):
        tracker.step(frame.astype(np.float32) / 255)
    with pytest.raises(ValueError, match="HxWx3"):
        tracker.step(frame[..., 0])
    tracker.step(frame)
    with pytest.raises(ValueError, match="box .* reaches outside the 320x180 frame"):
        tracker.add_new_points_or_box(1, box=(200, 100, 400, 170))
    with pytest.raises(ValueError, match="lies outside the 320x180 frame"):
        tracker.add_new_points_or_box(1, points=[(330, 10)])
    with pytest.raises(ValueError, match="2 points but 1 labels"):
        tracker.add_new_points_or_box(1, points=[(10, 10), (20, 20)], labels=[1])
    with pytest.raises(ValueError, match="at the frame's size"):
        tracker.add_new_mask(1, np.ones((10, 10), bool))
    with pytest.raises(ValueError, match="empty"):
        tracker.add_new_mask(1, np.zeros((SIZE[1], SIZE[0]), bool))
    assert tracker.object_ids == []          # nothing refused left an object behind


def test_seeded_random_weights_track_something(clip):
    """``seed=`` (``--random-weights``) gives weights whose object score is positive: the pipeline checks that
    use them compare real masks. Plain random weights find no object (every logit -1024)."""
    frames = frames_of(clip)[:2]
    for seed, finds in ((0, True), (None, False)):
        if seed is None:
            torch.manual_seed(0)
        tracker = TorchStreamingTracker(build_video_predictor(seed=seed, fused=True))
        tracker.step(frames[0])
        tracker.add_new_points_or_box(1, box=BOXES[0])
        out = tracker.step(frames[1])
        if finds:
            nonempty(out.logits)
        else:
            assert (out.logits == -1024).all()


def test_sam2_progress_bar_is_silenced_while_any_tracker_steps_and_restored_after_the_last():
    """Trackers stepping in several threads (the demo's sessions) overlap: the first to enter swaps sam2's tqdm
    out, one leaving while another is inside must not restore it, and the last to leave restores the original."""
    import sam2.sam2_video_predictor as video
    from repvit.edgetam.stream_torch import _quiet_sam2
    original = video.tqdm
    first, second = _quiet_sam2(), _quiet_sam2()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert video.tqdm is not original and list(video.tqdm([1, 2])) == [1, 2]   # the second is still inside
    second.__exit__(None, None, None)
    assert video.tqdm is original
