"""DAVIS semi-supervised video object segmentation scores: region similarity J, boundary F, J&F.

The measures of Perazzi et al., "A Benchmark Dataset and Evaluation Methodology for Video Object
Segmentation" (CVPR 2016), computed as the official DAVIS 2017 evaluator does
(github.com/davisvideochallenge/davis2017-evaluation, ``davis2017/metrics.py``, ``utils.py``,
``evaluation.py``, ``evaluation_method.py``), with numpy alone; tests/test_davis.py holds them to
that code's values (``scripts/davis_reference.py`` writes them).

- J (``region_similarity``): intersection over union of the object's masks; 1 when both are
  empty. ``void`` pixels count in neither.
- F (``boundary_measure``): each mask's one-pixel boundary (the official ``seg2bmap``: a pixel is on
  the boundary when it differs from its right, lower or lower-right neighbour); a boundary pixel
  matches when the other boundary comes within ``r`` pixels, ``r = ceil(bound_th * hypot(H, W))``
  (8 at 480x854) or ``bound_th`` itself when it is 1 or more, "within" being the disk
  ``dx^2 + dy^2 <= r^2`` (the official code dilates with OpenCV and scikit-image's disk);
  F is the harmonic mean of the matched fractions (precision, recall). Both boundaries empty give
  1, one empty 0.
- Per object over the scored frames (``sequence_statistics``): mean, recall (the share of frames
  above 0.5) and decay (mean of the first quarter minus mean of the last, the quarters overlapping
  by one frame at their ends as the official bin indices do).

``evaluate_predictions`` follows the official semi-supervised protocol:

- scored frames: every annotated frame except the first (given to the tracker) and the last;
- objects: indices 1..max of the first annotation frame, each scored alone on every scored frame;
- void (255) in an annotation counts as background: the official semi-supervised run reads the
  void mask but does not pass it to the measures;
- a prediction missing an object is scored as an empty mask (the official code pads with
  zeros); an object index above the annotation's count is an error (the official code exits);
- a missing prediction PNG for a scored frame is an error naming every missing file (the official
  code prints the first one and exits); first and last frames need no prediction;
- overall: the mean over all objects of every sequence (not over sequences) of each statistic,
  and J&F = (J mean + F mean) / 2; rows per object are named ``<sequence>_<index>``.

One deliberate difference: the official decay keeps its bin indices in uint8, which overflows from
256 scored frames on (its decay is NaN there); here they are plain integers, which gives the
official value for up to 255 scored frames (every DAVIS sequence has at most 104).
"""
from __future__ import annotations

import math
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from repvit.data.davis import (PathLike, VOID, list_annotated_frames, list_sequences, annotation_path,
                               read_annotation)

BOUND_TH = 0.008   # boundary tolerance: a share of the image diagonal (DAVIS's default)
DECAY_BINS = 4
PROTOCOL = ("DAVIS semi-supervised (davis2017-evaluation): every annotated frame except the first and the last; "
            "objects 1..max of the first annotation frame; void (255) counted as background")


def _masks(gt: np.ndarray, pred: np.ndarray, void: Optional[np.ndarray]) -> tuple:
    gt, pred = np.asarray(gt).astype(bool), np.asarray(pred).astype(bool)
    if gt.ndim != 2 or gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} must be masks of one H x W shape")
    if void is not None:
        void = np.asarray(void).astype(bool)
        if void.shape != gt.shape:
            raise ValueError(f"void mask {void.shape} and ground truth {gt.shape} differ in shape")
    return gt, pred, void


def region_similarity(gt: np.ndarray, pred: np.ndarray, void: Optional[np.ndarray] = None) -> float:
    """J: intersection over union of two ``H x W`` masks (nonzero = object), leaving out ``void``
    pixels; 1.0 when the union is empty (both masks empty)."""
    gt, pred, void = _masks(gt, pred, void)
    keep = np.ones_like(gt) if void is None else ~void
    inter = np.count_nonzero(gt & pred & keep)
    union = np.count_nonzero((gt | pred) & keep)
    return 1.0 if union == 0 else inter / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """The one-pixel-wide boundary of a mask (boolean, same shape), as DAVIS's ``seg2bmap`` draws it:
    a pixel whose value differs from its right, lower or lower-right neighbour (outside the image
    counts as background), except that the last row compares with the right neighbour alone, the
    last column with the lower one alone, and the bottom-right pixel is never on it."""
    seg = np.asarray(mask).astype(bool)
    right, below, diagonal = (np.zeros_like(seg) for _ in range(3))
    right[:, :-1] = seg[:, 1:]
    below[:-1, :] = seg[1:, :]
    diagonal[:-1, :-1] = seg[1:, 1:]
    edge = (seg ^ right) | (seg ^ below) | (seg ^ diagonal)
    edge[-1, :] = seg[-1, :] ^ right[-1, :]
    edge[:, -1] = seg[:, -1] ^ below[:, -1]
    edge[-1, -1] = False
    return edge


def boundary_radius(shape: tuple, bound_th: float = BOUND_TH) -> float:
    """The matching distance in pixels: ``bound_th`` itself when it is 1 or more, else
    ``ceil(bound_th * hypot(H, W))``."""
    if bound_th <= 0:
        raise ValueError(f"bound_th must be positive (a share of the diagonal below 1, pixels from 1), got {bound_th}")
    return float(bound_th) if bound_th >= 1 else float(math.ceil(bound_th * math.hypot(*shape[:2])))


@lru_cache(maxsize=16)
def _disk_rows(radius: float) -> tuple:
    """The dilation disk as rows ``(dy, dx_first, dx_last)``.

    The disk is scikit-image's: offsets ``arange(-r, r + 1)`` on both axes, kept where
    ``x^2 + y^2 <= r^2``; OpenCV anchors a kernel of n cells at cell ``n // 2``. For a whole radius
    this is the centred disk; a fractional ``bound_th`` of 1 or more gives an even-sized kernel and
    a disk shifted by half a pixel, as it does in the official code.
    """
    offsets = np.arange(-radius, radius + 1)
    inside = offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius ** 2
    anchor = len(offsets) // 2
    rows = []
    for i, row in enumerate(inside):
        cols = np.flatnonzero(row)
        if cols.size:   # each row of a disk is one run of cells
            rows.append((i - anchor, int(cols[0]) - anchor, int(cols[-1]) - anchor))
    return tuple(rows)


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary dilation of ``mask`` by the disk of ``radius`` (outside the image adds nothing).

    Row by row of the disk: a horizontal run ``[dx_first, dx_last]`` is a sliding-window "any",
    read off a cumulative sum, then shifted by the row's ``dy``; runs of equal extent are shared.
    """
    rows = _disk_rows(radius)
    height, width = mask.shape
    pad = max(max(abs(lo), abs(hi)) for _, lo, hi in rows)
    padded = np.zeros((height, width + 2 * pad + 1), dtype=np.int32)
    padded[:, pad + 1:pad + 1 + width] = mask
    cumulative = np.cumsum(padded, axis=1)   # cumulative[:, c] = sum of mask columns < c - pad
    runs: dict = {}
    out = np.zeros_like(mask, dtype=bool)
    for dy, lo, hi in rows:
        if (lo, hi) not in runs:   # any(mask[y, x + lo .. x + hi]) for every x
            runs[lo, hi] = (cumulative[:, pad + hi + 1:pad + hi + 1 + width]
                            - cumulative[:, pad + lo:pad + lo + width]) > 0
        run = runs[lo, hi]
        if abs(dy) >= height:
            continue
        if dy >= 0:
            out[:height - dy] |= run[dy:]
        else:
            out[-dy:] |= run[:height + dy]
    return out


def boundary_measure(gt: np.ndarray, pred: np.ndarray, void: Optional[np.ndarray] = None,
                     bound_th: float = BOUND_TH) -> float:
    """F: the boundary F-measure of two ``H x W`` masks (nonzero = object), ``void`` pixels removed
    from both masks before their boundaries are drawn; see the module docstring."""
    gt, pred, void = _masks(gt, pred, void)
    if void is not None:
        gt, pred = gt & ~void, pred & ~void
    radius = boundary_radius(gt.shape, bound_th)
    pred_edge, gt_edge = boundary_map(pred), boundary_map(gt)
    n_pred, n_gt = np.count_nonzero(pred_edge), np.count_nonzero(gt_edge)
    if n_pred == 0 or n_gt == 0:
        # no boundary on one side: precision (or recall) 1 over an empty set, the other 0 -> F 0; both empty -> 1
        return 1.0 if n_pred == n_gt else 0.0
    # Only the dilations' values on the two boundaries are read, and every boundary pixel lies in the
    # boundaries' bounding box: dilating within it gives the same counts for less work.
    rows, cols = np.flatnonzero((pred_edge | gt_edge).any(axis=1)), np.flatnonzero((pred_edge | gt_edge).any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    pred_edge, gt_edge = pred_edge[box], gt_edge[box]
    precision = np.count_nonzero(pred_edge & _dilate(gt_edge, radius)) / n_pred
    recall = np.count_nonzero(gt_edge & _dilate(pred_edge, radius)) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def sequence_statistics(values: Iterable[float]) -> dict:
    """``{"mean", "recall", "decay"}`` of one object's per-frame J (or F) values, in frame order.

    recall: the share of values above 0.5; decay: the mean of bin 0 minus the mean of bin 3, bins
    ``values[ids[i]:ids[i + 1] + 1]`` with ``ids = round(linspace(1, n, 5) + 1e-10) - 1`` (the
    official indices: neighbouring bins share their end frame). NaN values are left out of the means.
    """
    values = np.asarray(list(values), dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"sequence statistics need a non-empty list of per-frame values, got shape {values.shape}")
    ids = (np.round(np.linspace(1, values.size, DECAY_BINS + 1) + 1e-10) - 1).astype(np.int64)
    bins = [values[ids[i]:ids[i + 1] + 1] for i in range(DECAY_BINS)]
    with warnings.catch_warnings():   # an all-NaN bin gives NaN, as in the official code
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(values))
        decay = float(np.nanmean(bins[0]) - np.nanmean(bins[-1]))
    return {"mean": mean, "recall": float(np.mean(values > 0.5)), "decay": decay}


# --------------------------------------------------------------------------- whole folders
def _objects_of_first_frame(root: Path, sequence: str, frame: str) -> int:
    first = read_annotation(annotation_path(root, sequence, frame))
    count = int(np.where(first == VOID, 0, first).max(initial=0))
    if count == 0:
        raise ValueError(f"sequence {sequence!r}: its first annotation frame ({frame}.png) has no object; the "
                         "semi-supervised evaluation scores the objects that frame gives the tracker")
    return count


def _score_sequence(root: Path, predictions: Path, sequence: str) -> dict:
    """Per-object per-frame J and F of one sequence: ``{"frames": [...], "J": (n_obj, T), "F": (n_obj, T)}``."""
    frames = list_annotated_frames(root, sequence)
    if len(frames) < 3:
        raise ValueError(f"sequence {sequence!r} has {len(frames)} annotated frame(s); the semi-supervised "
                         "evaluation leaves out the first and the last, so it needs at least 3")
    count = _objects_of_first_frame(root, sequence, frames[0])
    scored = frames[1:-1]
    paths = [predictions / sequence / f"{frame}.png" for frame in scored]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(p.name for p in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise FileNotFoundError(f"{predictions / sequence}: {len(missing)} of the {len(scored)} scored frames have no "
                                f"prediction ({shown}). Every annotated frame except the first and the last needs "
                                "<predictions>/<sequence>/<frame>.png in the annotation's format")
    j_values, f_values = np.zeros((count, len(scored))), np.zeros((count, len(scored)))
    for t, (frame, path) in enumerate(zip(scored, paths)):
        truth = read_annotation(annotation_path(root, sequence, frame))   # void (255) is none of 1..count: background
        pred = read_annotation(path)
        if pred.shape != truth.shape:
            raise ValueError(f"{path}: prediction of shape {pred.shape}, annotation of {truth.shape}")
        if pred.max(initial=0) > count:
            raise ValueError(f"{path}: object index {int(pred.max())} in the prediction, but the first annotation "
                             f"frame of {sequence!r} has {count} object(s) (indices 1..{count})")
        for k in range(1, count + 1):
            j_values[k - 1, t] = region_similarity(truth == k, pred == k)
            f_values[k - 1, t] = boundary_measure(truth == k, pred == k)
    return {"frames": scored, "J": j_values, "F": f_values}


def _mean_row(rows: list) -> dict:
    """The mean over ``rows`` (each ``{"J": stats, "F": stats}``) of every statistic, plus J&F."""
    out = {m: {s: float(np.mean([r[m][s] for r in rows])) for s in ("mean", "recall", "decay")} for m in ("J", "F")}
    out["J&F"] = {"mean": (out["J"]["mean"] + out["F"]["mean"]) / 2}
    return out


def evaluate_predictions(davis_root: PathLike, predictions_dir: PathLike, sequences: Optional[Iterable[str]] = None,
                         *, progress: Optional[Callable[[str], None]] = None) -> dict:
    """Score ``predictions_dir/<sequence>/<frame>.png`` against the annotations of ``davis_root`` with
    the official DAVIS semi-supervised protocol (module docstring).

    ``sequences``: the sequences to score (default: every sequence of ``davis_root``); each must have
    its prediction folder. ``progress`` is called with each sequence's name before it is scored.

    Returns a JSON-able dict: ``J``/``F`` ``{mean, recall, decay}`` and ``J&F`` ``{mean}`` over all
    objects; ``objects``: one row per object named ``<sequence>_<index>`` with its statistics, ``J&F``
    and its per-frame values; ``sequences``: per sequence, the scored frames, the object count and the
    mean over its objects; and the ``protocol``, ``davis_root``, ``predictions`` it was made with.
    """
    root, predictions = Path(davis_root), Path(predictions_dir)
    if isinstance(sequences, str):
        raise TypeError("sequences is a list of sequence names, not one string: write [name]")
    names = list_sequences(root) if sequences is None else list(sequences)
    if not names:
        raise ValueError("no sequences to score")
    for name in names:   # a misspelt name is reported as such before the predictions are looked at
        list_annotated_frames(root, name)
    if not predictions.is_dir():
        raise FileNotFoundError(f"predictions folder {str(predictions)!r} does not exist; it must hold "
                                "<sequence>/<frame>.png for every scored frame")
    absent = [name for name in names if not (predictions / name).is_dir()]
    if absent:
        raise FileNotFoundError(f"{predictions}: no prediction folder for {len(absent)} of {len(names)} sequences "
                                f"({', '.join(absent[:10])}); predict them, or name the sequences to score")
    objects, per_sequence = {}, {}
    for name in names:
        if progress is not None:
            progress(name)
        scores = _score_sequence(root, predictions, name)
        rows = []
        for k in range(scores["J"].shape[0]):
            row = {"J": sequence_statistics(scores["J"][k]), "F": sequence_statistics(scores["F"][k])}
            row["J&F"] = {"mean": (row["J"]["mean"] + row["F"]["mean"]) / 2}
            row["per_frame"] = {"J": scores["J"][k].tolist(), "F": scores["F"][k].tolist()}
            objects[f"{name}_{k + 1}"] = row
            rows.append(row)
        per_sequence[name] = {"objects": len(rows), "frames": scores["frames"], **_mean_row(rows)}
    return {"protocol": PROTOCOL, "davis_root": str(root), "predictions": str(predictions),
            **_mean_row(list(objects.values())), "sequences": per_sequence, "objects": objects}
