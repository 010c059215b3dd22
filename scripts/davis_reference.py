"""Write tests/data/davis_reference.json: what the OFFICIAL DAVIS evaluator computes on DAVIS 2016 masks.

tests/test_davis.py holds repvit's J, F, statistics and whole-folder evaluation to these values. The
official code (github.com/davisvideochallenge/davis2017-evaluation, BSD-3-Clause) is obtained when
this script runs and is never stored in this repository: from ``--official DIR`` (a checkout or its
git directory) or, without that option, from GitHub's zip of the pinned commit. It needs OpenCV and
scikit-image (``pip install opencv-python-headless scikit-image tqdm``; they are not repvit's
dependencies). The DAVIS 2016 masks are read from ``--davis`` (default ``../shared/data/davis-2016``
beside the checkout, or ``$REPVIT_DAVIS_2016``); they are never copied into the repository.

What is recorded (the test rebuilds every input with the functions of this file, so the file
holds only names and numbers):

1. ``frames``: J (``db_eval_iou``) and F (``db_eval_boundary``) of every ``--every``-th annotation
   of each sequence against each of ``PERTURBATIONS`` of it; some also with a void band, and some
   with other boundary tolerances (``bound_th``);
2. ``statistics``: ``db_statistics`` (mean, recall, decay) of value lists of several lengths;
3. ``runs``: ``DAVISEvaluation(task="semi-supervised").evaluate`` on whole sequences, with the
   global figures of ``evaluation_method.py``: ``davis2016`` (the 2016 masks as DAVIS 2017 index
   PNGs, a prediction per frame perturbed by ``prediction_kind``), ``first_and_last_missing`` (the
   same without the first and last frames' predictions) and ``multi_object`` (three objects and a
   void band in one synthetic sequence, ``multi_object_frame``; predictions never hold object 3);
4. ``errors``: what the official code does with a missing prediction frame and with an object
   index beyond the annotation's count (it prints a message and exits).

    python scripts/davis_reference.py --official /path/to/davis2017-evaluation   # a checkout or its .git
    python scripts/davis_reference.py                                            # downloads the zip
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import io
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

OFFICIAL_REPO = "davisvideochallenge/davis2017-evaluation"
OFFICIAL_COMMIT = "ac7c43fca936f9722837b7fbd337d284ba37004b"   # 2023-02-26, the newest commit
OFFICIAL_FILES = ("davis2017/davis.py", "davis2017/evaluation.py", "davis2017/metrics.py", "davis2017/results.py",
                  "davis2017/utils.py", "evaluation_method.py")
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("REPVIT_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_DAVIS = Path(os.environ.get("REPVIT_DAVIS_2016", SHARED_DATA / "davis-2016"))
DEFAULT_OUT = REPO / "tests" / "data" / "davis_reference.json"
FORMAT = "davis-official-reference"
INSTALL = "pip install opencv-python-headless scikit-image tqdm"

# --------------------------------------------------------------------------- shared with the test
PERTURBATIONS = ("ground_truth", "shift", "erode", "dilate", "empty", "full", "left_half")
SHIFT = (9, -13)                 # rows down, columns left
ERODE_STEPS, DILATE_STEPS = 4, 6  # 3x3-square steps
VOID_ROWS = (200, 216)           # the void band: these rows, every column
OTHER_BOUND_TH = (0.004, 0.02, 3, 2.5)
MULTI_NAME, MULTI_SOURCES, MULTI_FRAMES = "multi", ("hockey", "bus", "kite-walk"), 30
STATISTICS_LENGTHS = (1, 2, 3, 4, 5, 6, 7, 9, 13, 50, 73, 104, 255)
MISSING_FRAME = ("boat", "00037")
EXTRA_OBJECT_FRAME = ("bus", "00010")


def read_binary(path) -> np.ndarray:
    """A DAVIS 2016 mask PNG (grey 0/255) as a boolean array."""
    with Image.open(path) as image:
        return np.asarray(image) > 0


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``mask`` moved by ``dy`` rows and ``dx`` columns, background where nothing moved in."""
    out = np.zeros_like(mask)
    height, width = mask.shape
    out[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        mask[max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return out


def _square_steps(mask: np.ndarray, steps: int, grow: bool) -> np.ndarray:
    """``steps`` dilations (``grow``) or erosions by the 3x3 square; outside the image is background."""
    for _ in range(steps):
        moved = [_shift(mask, dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
        mask = np.logical_or.reduce([mask] + moved) if grow else np.logical_and.reduce([mask] + moved)
    return mask


def perturb(mask: np.ndarray, kind: str) -> np.ndarray:
    """A deterministic wrong (or right) prediction made from the boolean mask ``mask``."""
    mask = np.asarray(mask, dtype=bool)
    if kind == "ground_truth":
        return mask.copy()
    if kind == "shift":
        return _shift(mask, *SHIFT)
    if kind in ("erode", "dilate"):
        return _square_steps(mask, ERODE_STEPS if kind == "erode" else DILATE_STEPS, grow=kind == "dilate")
    if kind == "empty":
        return np.zeros_like(mask)
    if kind == "full":
        return np.ones_like(mask)
    if kind == "left_half":
        cols = np.flatnonzero(mask.any(axis=0))
        cut = (cols[0] + cols[-1]) // 2 if cols.size else 0
        return mask & (np.arange(mask.shape[1]) < cut)[None, :]
    raise ValueError(f"unknown perturbation {kind!r}; one of {PERTURBATIONS}")


def void_band(shape: tuple) -> np.ndarray:
    """The void mask used with ``void``: rows ``VOID_ROWS`` of every column."""
    void = np.zeros(shape, dtype=bool)
    void[VOID_ROWS[0]:VOID_ROWS[1]] = True
    return void


def sample_frames(frames: list, every: int) -> list:
    """The frames whose J and F are recorded: every ``every``-th, from the first."""
    return frames[::every]


def prediction_kind(t: int) -> str:
    """The perturbation predicting annotated frame ``t`` of a sequence in the whole-sequence runs."""
    return PERTURBATIONS[t % len(PERTURBATIONS)]


def statistics_values(n: int) -> list:
    """A fixed list of ``n`` values in [0, 1] with exact 0.5s among them (recall counts only > 0.5)."""
    values = [round((0.37 + 0.61803398875 * i) % 1.0, 6) for i in range(n)]
    return [0.5 if i % 5 == 2 else v for i, v in enumerate(values)]


def multi_object_frame(davis_root: Path, t: int) -> tuple:
    """Frame ``t`` of the synthetic three-object sequence: ``(annotation, prediction)``, uint8 index arrays.

    Annotation: object k is annotation ``t`` of ``MULTI_SOURCES[k - 1]``, earlier objects drawn over
    later ones, and the void band (255) over all. Prediction: objects 1 and 2 perturbed by
    ``prediction_kind(t)`` and ``prediction_kind(t + 3)`` (1 over 2), object 3 never predicted.
    """
    masks = [read_binary(davis_root / "Annotations" / "480p" / name / f"{t:05d}.png") for name in MULTI_SOURCES]
    annotation = np.zeros(masks[0].shape, dtype=np.uint8)
    for k in (3, 2, 1):
        annotation[masks[k - 1]] = k
    annotation[void_band(annotation.shape)] = 255
    prediction = np.zeros_like(annotation)
    prediction[perturb(masks[1], prediction_kind(t + 3))] = 2
    prediction[perturb(masks[0], prediction_kind(t))] = 1
    return annotation, prediction


# --------------------------------------------------------------------------- the official side
def _index_png(path: Path, index: np.ndarray) -> None:
    """An index PNG as DAVIS 2017 stores them (palette mode; the colours do not matter to the scores)."""
    image = Image.fromarray(index.astype(np.uint8))
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [255] * (768 - 12))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def official_source(src: str | None, dest: Path) -> tuple[Path, dict]:
    """The official repository's files under ``dest``, and a record of where they came from."""
    if src is None:
        url = f"https://codeload.github.com/{OFFICIAL_REPO}/zip/{OFFICIAL_COMMIT}"
        print(f"downloading {url}", file=sys.stderr)
        with urllib.request.urlopen(url, timeout=120) as response:
            zipfile.ZipFile(io.BytesIO(response.read())).extractall(dest)
        root = next(p for p in dest.iterdir() if (p / "davis2017" / "metrics.py").is_file())
        return root, {"source": url, "commit": OFFICIAL_COMMIT}
    path = Path(src)
    if (path / "davis2017" / "metrics.py").is_file():
        done = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
        return path, {"source": f"local checkout {path.name}", "commit": done.stdout.strip() if done.returncode == 0
                      else "unknown (not a git checkout)"}
    if (path / "HEAD").is_file() and (path / "objects").is_dir():   # a (bare) git directory
        for ref in (OFFICIAL_COMMIT, "HEAD"):
            commit = subprocess.run(["git", "--git-dir", str(path), "rev-parse", f"{ref}^{{commit}}"],
                                    capture_output=True, text=True)
            if commit.returncode == 0:
                if ref != OFFICIAL_COMMIT:
                    print(f"warning: {OFFICIAL_COMMIT} is not in {path}; using its HEAD", file=sys.stderr)
                archive = subprocess.run(["git", "--git-dir", str(path), "archive", "--format=zip", ref],
                                         capture_output=True, check=True)
                zipfile.ZipFile(io.BytesIO(archive.stdout)).extractall(dest)
                return dest, {"source": f"git archive of a local git directory of {OFFICIAL_REPO}",
                              "commit": commit.stdout.strip()}
    raise SystemExit(f"--official {src!r}: neither a checkout holding davis2017/metrics.py nor a git directory "
                     f"of {OFFICIAL_REPO}")


def load_official(root: Path):
    """The official modules ``(metrics, utils, evaluation)``, imported from ``root``."""
    for module, package in (("cv2", "opencv-python-headless"), ("skimage", "scikit-image"), ("tqdm", "tqdm"),
                            ("scipy", "scipy")):
        try:
            importlib.import_module(module)
        except ImportError:
            raise SystemExit(f"the official evaluator needs {package} (not a repvit dependency): {INSTALL}") from None
    sys.path.insert(0, str(root))
    return tuple(importlib.import_module(f"davis2017.{name}") for name in ("metrics", "utils", "evaluation"))


def _official_run(evaluation, root: Path, predictions: Path) -> dict:
    """``evaluate`` as ``evaluation_method.py`` runs it, summarized as that script does; or how it exited."""
    stdout = io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout):
            evaluator = evaluation.DAVISEvaluation(davis_root=str(root), task="semi-supervised", gt_set="train")
            result = evaluator.evaluate(str(predictions))
    except SystemExit:
        return {"official": "exit", "message": stdout.getvalue().strip()}
    j, f = result["J"], result["F"]
    objects = {name: {m: {s: float(result[m][key][i]) for s, key in (("mean", "M"), ("recall", "R"), ("decay", "D"))}
                      for m in ("J", "F")} for i, name in enumerate(j["M_per_object"])}
    final = {"J&F-Mean": (np.mean(j["M"]) + np.mean(f["M"])) / 2.0, "J-Mean": np.mean(j["M"]),
             "J-Recall": np.mean(j["R"]), "J-Decay": np.mean(j["D"]), "F-Mean": np.mean(f["M"]),
             "F-Recall": np.mean(f["R"]), "F-Decay": np.mean(f["D"])}
    return {"official": "scored", "global": {k: float(v) for k, v in final.items()}, "objects": objects}


def _official_layout(dest: Path, sequences: dict) -> Path:
    """A DAVIS 2017 folder under ``dest``: ``sequences`` maps a name to ``(jpegs, annotations)`` lists."""
    for name, (jpegs, annotations) in sequences.items():
        for i, (jpeg, annotation) in enumerate(zip(jpegs, annotations)):
            target = dest / "JPEGImages" / "480p" / name / f"{i:05d}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(Path(jpeg).resolve())
            _index_png(dest / "Annotations" / "480p" / name / f"{i:05d}.png", annotation)
    (dest / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (dest / "ImageSets" / "2017" / "train.txt").write_text("".join(f"{name}\n" for name in sequences))
    return dest


def whole_runs(evaluation, davis: Path, sequences: list, work: Path) -> tuple[dict, dict]:
    """The ``runs`` and ``errors`` sections (see the module docstring)."""
    layout, predictions = {}, work / "predictions"
    for name in sequences:
        pngs = sorted((davis / "Annotations" / "480p" / name).glob("*.png"))
        jpegs = sorted((davis / "JPEGImages" / "480p" / name).glob("*.jpg"))
        masks = [read_binary(p) for p in pngs]
        layout[name] = (jpegs, [m.astype(np.uint8) for m in masks])
        for t, mask in enumerate(masks):
            _index_png(predictions / name / f"{t:05d}.png", perturb(mask, prediction_kind(t)).astype(np.uint8))
    root = _official_layout(work / "davis2016", layout)
    runs = {"davis2016": _official_run(evaluation, root, predictions)}

    ends = work / "predictions_without_ends"
    for name in sequences:
        frames = sorted((predictions / name).glob("*.png"))
        for png in frames[1:-1]:
            _index_png(ends / name / png.name, np.asarray(Image.open(png)))
    runs["first_and_last_missing"] = _official_run(evaluation, root, ends)

    errors = {}
    missing = predictions / MISSING_FRAME[0] / f"{MISSING_FRAME[1]}.png"
    kept = missing.read_bytes()
    missing.unlink()
    errors["missing_frame"] = {"removed": list(MISSING_FRAME), **_official_run(evaluation, root, predictions)}
    missing.write_bytes(kept)
    extra = predictions / EXTRA_OBJECT_FRAME[0] / f"{EXTRA_OBJECT_FRAME[1]}.png"
    index = np.asarray(Image.open(extra)).copy()
    index[:10, :10] = 2
    _index_png(extra, index)
    errors["extra_object"] = {"frame": list(EXTRA_OBJECT_FRAME), **_official_run(evaluation, root, predictions)}

    frames = [multi_object_frame(davis, t) for t in range(MULTI_FRAMES)]
    if int(np.where(frames[0][0] == 255, 0, frames[0][0]).max()) != 3:
        raise SystemExit("the synthetic sequence lost an object in its first frame: change MULTI_SOURCES")
    jpegs = sorted((davis / "JPEGImages" / "480p" / MULTI_SOURCES[0]).glob("*.jpg"))[:MULTI_FRAMES]
    multi_root = _official_layout(work / "multi", {MULTI_NAME: (jpegs, [a for a, _ in frames])})
    for t, (_, prediction) in enumerate(frames):
        _index_png(work / "multi_predictions" / MULTI_NAME / f"{t:05d}.png", prediction)
    runs["multi_object"] = _official_run(evaluation, multi_root, work / "multi_predictions")
    return runs, errors


def frame_entries(metrics, davis: Path, sequences: list, every: int) -> list:
    """The ``frames`` section: one entry per (frame, perturbation[, void][, bound_th])."""
    entries = []
    for name in sequences:
        frames = sorted(p.stem for p in (davis / "Annotations" / "480p" / name).glob("*.png"))
        for k, frame in enumerate(sample_frames(frames, every)):
            truth = read_binary(davis / "Annotations" / "480p" / name / f"{frame}.png")
            cases = [(kind, None, 0.008) for kind in PERTURBATIONS]
            if k % 3 == 0:
                cases += [(kind, "band", 0.008) for kind in ("shift", "dilate", "full")]
            if k % 4 == 1:
                cases += [(kind, None, th) for kind in ("shift", "erode") for th in OTHER_BOUND_TH]
            for kind, void, bound_th in cases:
                pred = perturb(truth, kind)
                void_mask = void_band(truth.shape) if void else None
                j = metrics.db_eval_iou(truth, pred, void_mask)
                f = metrics.db_eval_boundary(truth, pred, void_mask, bound_th=bound_th)
                entries.append({"sequence": name, "frame": frame, "perturbation": kind, "void": void,
                                "bound_th": bound_th, "J": float(j), "F": float(f)})
    return entries


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", help=f"a checkout of {OFFICIAL_REPO} or its git directory "
                                           "(default: download the pinned commit's zip)")
    parser.add_argument("--davis", type=Path, default=DEFAULT_DAVIS, help="the DAVIS 2016 folder")
    parser.add_argument("--every", type=int, default=10, help="record every N-th annotated frame")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not (args.davis / "Annotations" / "480p").is_dir():
        raise SystemExit(f"{args.davis}: no Annotations/480p; give the DAVIS 2016 folder with --davis")
    sequences = sorted(p.name for p in (args.davis / "Annotations" / "480p").iterdir() if p.is_dir())
    with tempfile.TemporaryDirectory() as tmp:
        root, source = official_source(args.official, Path(tmp) / "official")
        source["sha256"] = {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in OFFICIAL_FILES}
        metrics, utils, evaluation = load_official(root)
        entries = frame_entries(metrics, args.davis, sequences, args.every)
        statistics = []
        for n in STATISTICS_LENGTHS:
            values = statistics_values(n)
            mean, recall, decay = utils.db_statistics(np.array(values))
            statistics.append({"values": values, "mean": float(mean), "recall": float(recall), "decay": float(decay)})
        runs, errors = whole_runs(evaluation, args.davis, sequences, Path(tmp) / "work")
    import cv2
    import skimage
    reference = {"format": FORMAT, "official": {"repository": OFFICIAL_REPO, **source},
                 "packages": {"numpy": np.__version__, "opencv": cv2.__version__, "scikit-image": skimage.__version__},
                 "davis": {"folder": args.davis.name, "sequences": sequences, "every": args.every},
                 "procedure": "scripts/davis_reference.py", "frames": entries, "statistics": statistics,
                 "runs": runs, "errors": errors}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w") as out:   # one entry a line: small diffs when the reference is remade
        out.write("{\n" + ",\n".join(f"{json.dumps(k)}: " + (
            "[\n" + ",\n".join(json.dumps(e) for e in v) + "\n]" if isinstance(v, list) else json.dumps(v, indent=1))
            for k, v in reference.items()) + "\n}\n")
    outcomes = ", ".join(f"{name}: {result['official']}" for name, result in {**runs, **errors}.items())
    print(f"wrote {args.output} ({args.output.stat().st_size / 1024:.0f} KiB): {len(entries)} frame entries, "
          f"{len(statistics)} statistics; official runs {outcomes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
