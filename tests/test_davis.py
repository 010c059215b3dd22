"""DAVIS scores equal the official evaluator's, and DAVIS folders are read and written in their own formats.

tests/data/davis_reference.json holds what the official davis2017-evaluation computes
(scripts/davis_reference.py; the official code is fetched when that script runs, never stored
here). Every input is rebuilt here with that script's functions from the real DAVIS 2016 masks in
``../shared/data/davis-2016`` (``$REPVIT_DAVIS_2016`` overrides it); without them the tests fail
(the project's data policy, tests/conftest.py).
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from repvit.data.davis import (DAVIS_2016_FORMAT, DAVIS_2017_FORMAT, annotation_path, list_annotated_frames,
                               list_frames, list_sequences, mask_format, read_annotation, read_image_set,
                               write_annotation)
from repvit.edgetam.evaluation import (boundary_measure, evaluate_predictions, region_similarity,
                                       sequence_statistics)
from tests.conftest import SHARED_DATA, shared_data

REPO = Path(__file__).resolve().parents[1]
REFERENCE = json.loads((REPO / "tests" / "data" / "davis_reference.json").read_text())
DAVIS = Path(os.environ.get("REPVIT_DAVIS_2016", SHARED_DATA / "davis-2016"))
TOL = 1e-6


def _script():
    spec = importlib.util.spec_from_file_location("davis_reference", REPO / "scripts" / "davis_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCRIPT = _script()


@pytest.fixture(scope="module")
def davis() -> Path:
    return shared_data("davis-2016", pattern="*.png", path=DAVIS)


def _close(ours: dict, official: dict, where: str) -> list:
    """Mismatches (beyond TOL) between two ``{"mean", "recall", "decay"}`` dicts."""
    return [f"{where} {k}: ours {ours[k]!r}, official {official[k]!r}" for k in official
            if not abs(ours[k] - official[k]) <= TOL]


def _check_run(report: dict, run: dict) -> None:
    """A report of ``evaluate_predictions`` against an official whole run of the reference."""
    assert run["official"] == "scored"
    assert sorted(report["objects"]) == sorted(run["objects"])
    bad = []
    for name, official in run["objects"].items():
        for measure in ("J", "F"):
            bad += _close(report["objects"][name][measure], official[measure], f"{name} {measure}")
    g = run["global"]
    for measure in ("J", "F"):
        bad += _close(report[measure], {s: g[f"{measure}-{s.capitalize()}"] for s in ("mean", "recall", "decay")},
                      f"global {measure}")
    bad += _close(report["J&F"], {"mean": g["J&F-Mean"]}, "global J&F")
    assert not bad, "\n".join(bad)


def _predict_2016(davis: Path, out: Path, sequences: list, kind_of=SCRIPT.prediction_kind) -> None:
    """Predictions for every annotated frame, ``kind_of(t, frame name)``-perturbed, in the annotation's format."""
    for sequence in sequences:
        for t, frame in enumerate(list_annotated_frames(davis, sequence)):
            truth = annotation_path(davis, sequence, frame)
            pred = SCRIPT.perturb(read_annotation(truth) > 0, kind_of(t))
            write_annotation(out / sequence / f"{frame}.png", pred, like=truth)


# --------------------------------------------------------------------------- the measures
def test_reference_records_the_official_code():
    official = REFERENCE["official"]
    assert official["repository"] == "davisvideochallenge/davis2017-evaluation" and len(official["commit"]) == 40
    entries = REFERENCE["frames"]
    assert {e["perturbation"] for e in entries} == set(SCRIPT.PERTURBATIONS)
    assert {e["void"] for e in entries} == {None, "band"}
    assert {e["bound_th"] for e in entries} == {0.008, *SCRIPT.OTHER_BOUND_TH}
    assert {e["sequence"] for e in entries} == {"boat", "bus", "hockey", "kite-walk"}


def test_j_and_f_of_every_reference_frame_equal_the_official_values(davis):
    bad, masks = [], {}
    for e in REFERENCE["frames"]:
        key = (e["sequence"], e["frame"])
        if key not in masks:
            masks[key] = read_annotation(annotation_path(davis, *key)).astype(bool)
        truth = masks[key]
        pred = SCRIPT.perturb(truth, e["perturbation"])
        void = SCRIPT.void_band(truth.shape) if e["void"] else None
        j = region_similarity(truth, pred, void)
        f = boundary_measure(truth, pred, void, bound_th=e["bound_th"])
        if not (abs(j - e["J"]) <= TOL and abs(f - e["F"]) <= TOL):
            bad.append(f"{e}: ours J {j!r}, F {f!r}")
    assert not bad, f"{len(bad)} of {len(REFERENCE['frames'])} differ:\n" + "\n".join(bad[:10])


def test_edge_cases_of_the_measures():
    empty, obj = np.zeros((30, 40), bool), np.zeros((30, 40), bool)
    obj[5:15, 10:20] = True
    assert region_similarity(empty, empty) == 1.0 and boundary_measure(empty, empty) == 1.0
    assert region_similarity(obj, empty) == 0.0 and boundary_measure(obj, empty) == 0.0
    assert boundary_measure(empty, obj) == 0.0
    assert region_similarity(obj, obj, void=obj) == 1.0   # everything left is void: the union is empty
    with pytest.raises(ValueError, match="one H x W shape"):
        region_similarity(obj, obj[:-1])
    with pytest.raises(ValueError, match="bound_th must be positive"):
        boundary_measure(obj, obj, bound_th=0)


def test_sequence_statistics_equal_official_db_statistics():
    bad = []
    for e in REFERENCE["statistics"]:
        assert e["values"] == SCRIPT.statistics_values(len(e["values"]))
        official = {k: e[k] for k in ("mean", "recall", "decay")}
        bad += _close(sequence_statistics(e["values"]), official, f"{len(e['values'])} values")
    assert not bad, "\n".join(bad)


def _decay_bins(n: int) -> list:
    """Official bin edges, written out: round half up of 1 + i (n - 1) / 4, minus one."""
    return [math.floor(1 + i * (n - 1) / 4 + 0.5) - 1 for i in range(5)]


def _statistics(values: list) -> dict:
    edges = _decay_bins(len(values))
    first, last = values[edges[0]:edges[1] + 1], values[edges[3]:edges[4] + 1]
    return {"mean": sum(values) / len(values), "recall": sum(v > 0.5 for v in values) / len(values),
            "decay": sum(first) / len(first) - sum(last) / len(last)}


def test_decay_beyond_the_official_uint8_range_uses_the_same_bins():
    # the official code's uint8 bin indices overflow from 256 frames on (NaN there): ours keep the same rule
    values = [((i * 37) % 101) / 100 for i in range(300)]
    assert _decay_bins(300) == [0, 75, 150, 224, 299]
    assert not _close(sequence_statistics(values), _statistics(values), "300 values")


# --------------------------------------------------------------------------- whole folders
def test_whole_davis_2016_run_equals_the_official_evaluation(davis, tmp_path):
    sequences = REFERENCE["davis"]["sequences"]
    predictions = tmp_path / "predictions"
    _predict_2016(davis, predictions, sequences)
    report = evaluate_predictions(davis, predictions)
    assert json.loads(json.dumps(report)) == report   # JSON-able as it is
    _check_run(report, REFERENCE["runs"]["davis2016"])
    for sequence in sequences:
        frames = list_annotated_frames(davis, sequence)
        assert report["sequences"][sequence]["frames"] == frames[1:-1]
        assert report["sequences"][sequence]["objects"] == 1

    # the first and last frames are not read: the official run without them scores the same
    ends = REFERENCE["runs"]["first_and_last_missing"]
    for sequence in sequences:
        frames = list_annotated_frames(davis, sequence)
        (predictions / sequence / f"{frames[0]}.png").unlink()
        (predictions / sequence / f"{frames[-1]}.png").unlink()
    report = evaluate_predictions(davis, predictions, sequences=["boat"])
    assert not _close(report["objects"]["boat_1"]["J"], ends["objects"]["boat_1"]["J"], "boat J")
    assert not _close(report["objects"]["boat_1"]["F"], ends["objects"]["boat_1"]["F"], "boat F")

    # a scored frame without a prediction: the official code exits, ours raises naming the file
    sequence, frame = REFERENCE["errors"]["missing_frame"]["removed"]
    assert REFERENCE["errors"]["missing_frame"]["official"] == "exit"
    (predictions / sequence / f"{frame}.png").unlink()
    with pytest.raises(FileNotFoundError, match=f"{frame}.png"):
        evaluate_predictions(davis, predictions, sequences=[sequence])

    # an object index beyond the first annotation's count: the official code exits, ours raises
    sequence, frame = REFERENCE["errors"]["extra_object"]["frame"]
    assert REFERENCE["errors"]["extra_object"]["official"] == "exit"
    index = read_annotation(predictions / sequence / f"{frame}.png")
    index[:10, :10] = 2
    write_annotation(predictions / sequence / f"{frame}.png", index, like=DAVIS_2017_FORMAT)
    with pytest.raises(ValueError, match="object index 2 .* 1 object"):
        evaluate_predictions(davis, predictions, sequences=[sequence])


def test_multi_object_sequence_with_void_equals_the_official_evaluation(davis, tmp_path):
    # annotations only, no 480p level: evaluation needs nothing else
    root, predictions = tmp_path / "davis2017", tmp_path / "predictions"
    for t in range(SCRIPT.MULTI_FRAMES):
        annotation, prediction = SCRIPT.multi_object_frame(davis, t)
        write_annotation(root / "Annotations" / SCRIPT.MULTI_NAME / f"{t:05d}.png", annotation)
        write_annotation(predictions / SCRIPT.MULTI_NAME / f"{t:05d}.png", prediction)
    assert list_sequences(root) == [SCRIPT.MULTI_NAME]
    report = evaluate_predictions(root, predictions)
    run = REFERENCE["runs"]["multi_object"]
    _check_run(report, run)
    assert report["sequences"][SCRIPT.MULTI_NAME]["objects"] == 3
    assert report["objects"]["multi_3"]["per_frame"]["J"] == [0.0] * (SCRIPT.MULTI_FRAMES - 2)   # never predicted

    # one more sequence of one object, predicted exactly (J = F = 1): the overall figures weigh objects, not sequences
    for frame in list_annotated_frames(davis, "boat")[:6]:
        truth = read_annotation(annotation_path(davis, "boat", frame))
        write_annotation(root / "Annotations" / "boat" / f"{frame}.png", truth)
        write_annotation(predictions / "boat" / f"{frame}.png", truth)
    report = evaluate_predictions(root, predictions)
    assert sorted(report["objects"]) == ["boat_1", "multi_1", "multi_2", "multi_3"]
    for m in ("J", "F"):
        rows = [official[m] for official in run["objects"].values()] + [{"mean": 1.0, "recall": 1.0, "decay": 0.0}]
        assert not _close(report[m], {s: sum(r[s] for r in rows) / 4 for s in ("mean", "recall", "decay")}, m)


def test_aggregation_equals_statistics_of_the_reference_values(davis, tmp_path):
    """Frames of the reference get its perturbation (values known from the official code), the others
    the ground truth (J = F = 1), the first and last an empty mask (not scored, so they must not
    matter); the expected report is computed here from those numbers alone."""
    sequences = ["boat", "bus"]
    listed = {(e["sequence"], e["frame"]): e for e in REFERENCE["frames"]
              if e["void"] is None and e["bound_th"] == 0.008 and e["perturbation"] == "shift"}
    expected, predictions = {}, tmp_path / "predictions"
    for sequence in sequences:
        frames = list_annotated_frames(davis, sequence)

        def kind(t, frames=frames, sequence=sequence):
            if t in (0, len(frames) - 1):
                return "empty"
            return "shift" if (sequence, frames[t]) in listed else "ground_truth"

        _predict_2016(davis, predictions, [sequence], kind_of=kind)
        values = {m: [listed[sequence, f][m] if (sequence, f) in listed else 1.0 for f in frames[1:-1]]
                  for m in ("J", "F")}
        assert sum(v != 1.0 for v in values["J"]) >= 5   # the reference frames are really in there
        expected[f"{sequence}_1"] = {m: _statistics(values[m]) for m in ("J", "F")}
        expected[f"{sequence}_1"]["per_frame"] = values
    report = evaluate_predictions(davis, predictions, sequences=sequences)
    bad = []
    for name, row in expected.items():
        for m in ("J", "F"):
            bad += _close(report["objects"][name][m], row[m], f"{name} {m}")
            ours = np.array(report["objects"][name]["per_frame"][m])
            if not np.allclose(ours, row["per_frame"][m], rtol=0, atol=TOL):
                bad.append(f"{name} per-frame {m}")
    for m in ("J", "F"):
        overall = {s: sum(row[m][s] for row in expected.values()) / len(expected) for s in ("mean", "recall", "decay")}
        bad += _close(report[m], overall, f"overall {m}")
        bad += _close(report["sequences"]["bus"][m], expected["bus_1"][m], f"bus {m}")
    bad += _close(report["J&F"], {"mean": (report["J"]["mean"] + report["F"]["mean"]) / 2}, "J&F")
    assert not bad, "\n".join(bad)


# --------------------------------------------------------------------------- reading and writing
def test_davis_2016_binary_masks_read_as_0_1_and_write_back_as_they_were(davis, tmp_path):
    source = annotation_path(davis, "boat", "00000")
    raw = np.asarray(Image.open(source))
    index = read_annotation(source)
    assert index.dtype == np.uint8 and set(np.unique(index)) == {0, 1}
    assert np.array_equal(index, raw // 255)
    assert mask_format(source) == DAVIS_2016_FORMAT
    out = write_annotation(tmp_path / "x" / "00000.png", index, like=source)
    with Image.open(out) as image:
        assert image.mode == "L" and np.array_equal(np.asarray(image), raw)
    with pytest.raises(ValueError, match="binary .* holds one object"):
        write_annotation(tmp_path / "y.png", index * 2, like=source)


def test_davis_2017_palette_masks_keep_indices_void_and_palette(tmp_path):
    rng = np.random.default_rng(0)
    index = rng.choice(np.array([0, 1, 2, 3, 255], dtype=np.uint8), size=(24, 32))
    palette = rng.integers(0, 256, size=768).tolist()   # not DAVIS's: it must be copied, not assumed
    source = tmp_path / "Annotations" / "480p" / "dance" / "00000.png"
    source.parent.mkdir(parents=True)
    image = Image.fromarray(index)
    image.putpalette(palette)
    image.save(source)
    assert np.array_equal(read_annotation(source), index)   # 255 stays: void is the evaluator's business
    fmt = mask_format(source)
    assert fmt.kind == "indexed" and list(fmt.palette) == palette
    prediction = np.where(index == 255, 0, index)
    out = write_annotation(tmp_path / "pred" / "dance" / "00000.png", prediction, like=source)
    with Image.open(out) as written:
        assert written.mode == "P" and written.getpalette() == palette
        assert np.array_equal(np.asarray(written), prediction)
    assert np.array_equal(read_annotation(out), prediction)
    out = write_annotation(tmp_path / "default.png", prediction)   # DAVIS 2017's own palette by default
    with Image.open(out) as written:
        assert written.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
    grey = tmp_path / "grey.png"   # a grey PNG of indices (not only 0/255) is indexed, not binary
    Image.fromarray(prediction).save(grey)
    assert np.array_equal(read_annotation(grey), prediction) and mask_format(grey).kind == "indexed"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="RGB image, not a DAVIS mask"):
        read_annotation(tmp_path / "rgb.png")
    assert DAVIS_2017_FORMAT.kind == "indexed"


def test_folder_listing_and_its_errors(davis, tmp_path):
    assert list_sequences(davis) == ["boat", "bus", "hockey", "kite-walk"]
    assert read_image_set(davis, "train") == ["boat", "bus", "hockey", "kite-walk"]
    frames = list_frames(davis, "bus")
    assert frames == list_annotated_frames(davis, "bus") and frames[:2] == ["00000", "00001"] and len(frames) == 80

    with pytest.raises(FileNotFoundError, match="does not exist.*davischallenge"):
        list_sequences(tmp_path / "nowhere")
    (tmp_path / "photos" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="is not a DAVIS folder: it has no Annotations/ .*holds photos"):
        list_annotated_frames(tmp_path, "a")
    root = tmp_path / "flat"   # no 480p level
    (root / "JPEGImages" / "cows").mkdir(parents=True)
    (root / "JPEGImages" / "cows" / "00000.jpg").write_bytes(b"")
    (root / "Annotations" / "dogs").mkdir(parents=True)
    assert list_sequences(root) == ["cows"] and list_frames(root, "cows") == ["00000"]
    with pytest.raises(FileNotFoundError, match="sequence 'cows' has no annotations .*sequences there: dogs"):
        list_annotated_frames(root, "cows")
    with pytest.raises(FileNotFoundError, match="sequence 'dogs' has no annotation: .* holds no .png"):
        list_annotated_frames(root, "dogs")
    with pytest.raises(FileNotFoundError, match="no list of the 'val' sequences"):
        read_image_set(root, "val")

    predictions = tmp_path / "predictions"
    with pytest.raises(FileNotFoundError, match="predictions folder .* does not exist"):
        evaluate_predictions(davis, predictions)
    (predictions / "boat").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no prediction folder for 3 of 4 sequences \(bus, hockey"):
        evaluate_predictions(davis, predictions)
    with pytest.raises(TypeError, match="not one string"):
        evaluate_predictions(davis, predictions, sequences="boat")
    with pytest.raises(FileNotFoundError, match="73 of the 73 scored frames have no prediction"):
        evaluate_predictions(davis, predictions, sequences=["boat"])
    for t in range(2):   # two annotated frames leave nothing to score
        write_annotation(root / "Annotations" / "dogs" / f"{t:05d}.png", np.ones((4, 4), np.uint8))
    (predictions / "dogs").mkdir()
    with pytest.raises(ValueError, match="2 annotated frame.*at least 3"):
        evaluate_predictions(root, predictions, sequences=["dogs"])
