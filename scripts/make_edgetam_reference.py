"""Write tests/data/edgetam_reference.npz: what the OFFICIAL EdgeTAM computes on real frames.

tests/test_edgetam.py compares repvit.edgetam with this file. The official code
(facebookresearch/EdgeTAM, a fork of Meta's sam2 that installs under the same package name) is
obtained when this script runs and is never stored in this repository: its ``sam2/`` folder is
taken from ``--official-src`` (a checkout or its git directory) or, without that option, from
GitHub's archive of the pinned commit, and imported in a child process whose ``sys.path`` starts
with that folder, so it never meets the ``sam2`` installed beside this project.

Procedure (the test repeats every step but the official model):
1. the official model is built from its own config (``configs/edgetam.yaml``; timm is told not to
   download the trunk's ImageNet weights, which are overwritten anyway);
2. weights: every tensor of its state dict, in order, is drawn from one ``torch.Generator``
   seeded with ``--seed`` (``reference_weights`` says how); the object-score head's last bias is
   then raised by ``OBJECT_SCORE_BIAS`` (both in ``repvit.edgetam.builder.seeded_weights``) so
   the random model sees an object on every frame (else every mask is the constant "no object"
   score and the video check would compare constants);
3. frames: ``FRAMES`` of ``../shared/data/videos/bedroom`` (960x540 JPEG), copied unchanged into
   a temporary folder as 00000.jpg, 00001.jpg, ...;
4. image mode (``SAM2ImagePredictor`` on the first frame, ``IMAGE_PROMPT``): every 8th channel of
   the image embedding and of the two high-resolution feature maps, the three low-resolution mask
   logits, the IoU predictions and the three masks at the frame's resolution;
5. video mode (the official video predictor), once per prompt of ``VIDEO_PROMPTS`` with that one
   object alone in the state (the official code cannot hold two objects in one state): per frame
   the 256x256 mask logits kept in the state, the object score and the mask at the video's
   resolution; for the first object also after ``CORRECTION``, a click on the last frame followed
   by a second propagation (stored as the third run).
Logits are stored as float16 and masks as packed bits to keep the file near 2 MB.

    python scripts/make_edgetam_reference.py --official-src /path/to/EdgeTAM   # a checkout or its .git
    python scripts/make_edgetam_reference.py                                   # downloads the archive
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

OFFICIAL_REPO = "facebookresearch/EdgeTAM"
OFFICIAL_COMMIT = "9cc44bfe9e16cc374242917b91283c718410ea87"   # 2025-04-30, the commit the bedroom frames come from
OFFICIAL_CONFIG = "configs/edgetam.yaml"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "tests" / "data" / "edgetam_reference.npz"
DEFAULT_FRAMES = REPO.parent / "shared" / "data" / "videos" / "bedroom"
FORMAT = "edgetam-reference"

FRAMES = ("00000.jpg", "00010.jpg", "00020.jpg")   # three frames: the prompt, then one and two memories
# (x, y) pixels of the 960x540 frames: a click on the girl and one off her, in image mode
IMAGE_PROMPT = {"points": [[400, 200], [600, 350]], "labels": [1, 0]}
# one object per prompt, all on the first frame: the girl by a click, the boy by a box
VIDEO_PROMPTS = ({"obj_id": 1, "points": [[400, 220]], "labels": [1]},
                 {"obj_id": 2, "box": [150, 130, 290, 410]})
# after the first propagation: a click for the girl on the last frame, then a second propagation
CORRECTION = {"obj_id": 1, "frame_idx": 2, "points": [[430, 260]], "labels": [1]}
CHANNEL_STEP = 8   # every 8th channel of the feature maps is stored


# --------------------------------------------------------------------------- shared with the test
def reference_weights(layout: list[tuple[str, tuple[int, ...]]], seed: int) -> dict[str, torch.Tensor]:
    """The package's seeded scheme (``repvit.edgetam.builder.seeded_weights``: the draws and the raised
    object-score bias), drawn over ``layout`` in its order; imported here, where it is used, so the child
    process meets the package only after its ``sys.path`` put the official ``sam2`` first."""
    from repvit.edgetam.builder import seeded_weights
    return seeded_weights(layout, seed)


def weights_checksum(weights: dict[str, torch.Tensor]) -> float:
    """Sum of |value| over all drawn tensors, in float64: equal drawn weights give equal sums."""
    return float(sum(v.double().abs().sum() for v in weights.values()))


def copy_frames(source: Path, dest: Path) -> Path:
    """``FRAMES`` of ``source`` copied byte for byte into ``dest`` as 00000.jpg, 00001.jpg, ..."""
    dest.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(FRAMES):
        shutil.copyfile(Path(source) / name, dest / f"{index:05d}.jpg")
    return dest


def pack(masks: np.ndarray) -> np.ndarray:
    return np.packbits(np.asarray(masks, dtype=bool), axis=-1)


def unpack(bits: np.ndarray, width: int) -> np.ndarray:
    return np.unpackbits(bits, axis=-1, count=width).astype(bool)


def image_outputs(predictor, image: np.ndarray) -> dict[str, np.ndarray]:
    """Run a sam2 ``SAM2ImagePredictor`` on ``image`` with ``IMAGE_PROMPT``; what the file stores."""
    with torch.no_grad():
        predictor.set_image(image)
        logits, iou, low_res = predictor.predict(point_coords=np.array(IMAGE_PROMPT["points"], dtype=np.float32),
                                                 point_labels=np.array(IMAGE_PROMPT["labels"]),
                                                 multimask_output=True, return_logits=True)
    features = predictor._features
    return {"embed": features["image_embed"][0, ::CHANNEL_STEP].float().numpy(),
            "feat_s1": features["high_res_feats"][1][0, ::CHANNEL_STEP].float().numpy(),
            "feat_s0": features["high_res_feats"][0][0, ::CHANNEL_STEP].float().numpy(),
            "image_lowres": np.asarray(low_res, dtype=np.float32), "image_iou": np.asarray(iou, dtype=np.float32),
            "image_masks": np.asarray(logits) > 0}


def track(predictor, folder: Path, prompts, correction: dict | None = None):
    """All ``prompts`` (first frame) in one state of a sam2 video predictor, propagated over the folder.

    Returns, per prompt: ``lowres`` (frames, 256, 256) logits of the state, ``score`` (frames,)
    object scores, ``masks`` (frames, H, W) at the video's resolution. With ``correction`` (a
    click added after the first propagation), returns ``(before, after)``: the results of the
    first propagation and of a second one after the click.
    """
    with torch.no_grad():
        state = predictor.init_state(video_path=str(folder))
        for prompt in prompts:
            predictor.add_new_points_or_box(state, frame_idx=0, obj_id=prompt["obj_id"],
                                            points=prompt.get("points"), labels=prompt.get("labels"),
                                            box=prompt.get("box"))
        before = _propagate(predictor, state, prompts)
        if correction is None:
            return before
        predictor.add_new_points_or_box(state, frame_idx=correction["frame_idx"], obj_id=correction["obj_id"],
                                        points=correction["points"], labels=correction["labels"])
        return before, _propagate(predictor, state, prompts)


def _propagate(predictor, state, prompts) -> list[dict[str, np.ndarray]]:
    masks = {}
    for frame_idx, obj_ids, logits in predictor.propagate_in_video(state):
        for row, obj_id in enumerate(obj_ids):
            masks[(obj_id, frame_idx)] = (logits[row, 0] > 0).numpy()
    frames = state["num_frames"]
    results = []
    for prompt in prompts:
        per_obj = state["output_dict_per_obj"][state["obj_id_to_idx"][prompt["obj_id"]]]
        outs = [per_obj["cond_frame_outputs"].get(t) or per_obj["non_cond_frame_outputs"][t] for t in range(frames)]
        results.append({"lowres": np.stack([o["pred_masks"][0, 0].float().numpy() for o in outs]),
                        "score": np.array([float(o["object_score_logits"].reshape(-1)[0]) for o in outs],
                                          dtype=np.float32),
                        "masks": np.stack([masks[(prompt["obj_id"], t)] for t in range(frames)])})
    return results


def load_frame(folder: Path) -> np.ndarray:
    from PIL import Image
    with Image.open(folder / "00000.jpg") as image:
        return np.array(image.convert("RGB"))


# --------------------------------------------------------------------------- obtaining the official code
def official_source(src: str | None, dest: Path) -> Path:
    """Put the official ``sam2/`` package under ``dest`` and return ``dest``."""
    if src is None:
        url = f"https://codeload.github.com/{OFFICIAL_REPO}/tar.gz/{OFFICIAL_COMMIT}"
        print(f"downloading {url}", file=sys.stderr)
        with urllib.request.urlopen(url, timeout=300) as response:
            archive = tarfile.open(fileobj=io.BytesIO(response.read()), mode="r:gz")
        members = [m for m in archive.getmembers() if "/sam2/" in m.name and not m.name.endswith(".pt")]
        for member in members:
            member.name = member.name.split("/", 1)[1]
        archive.extractall(dest, members=members, filter="data")
        return dest
    root = Path(src)
    if (root / "sam2" / OFFICIAL_CONFIG).is_file():
        shutil.copytree(root / "sam2", dest / "sam2")
        return dest
    if (root / "HEAD").is_file() and (root / "objects").is_dir():   # a (bare) git directory
        for ref in (OFFICIAL_COMMIT, "HEAD"):
            done = subprocess.run(["git", "--git-dir", str(root), "archive", "--format=tar", ref, "sam2"],
                                  capture_output=True)
            if done.returncode == 0:
                if ref != OFFICIAL_COMMIT:
                    print(f"warning: {OFFICIAL_COMMIT} is not in {root}; using its HEAD", file=sys.stderr)
                tarfile.open(fileobj=io.BytesIO(done.stdout)).extractall(dest, filter="data")
                return dest
    raise SystemExit(f"--official-src {src!r}: neither a checkout of {OFFICIAL_REPO} nor its git directory")


# --------------------------------------------------------------------------- the child: runs the official code
def run_official(source: Path, frames: Path, seed: int, output: Path) -> None:
    sys.path.insert(0, str(source))
    import sam2
    if not Path(sam2.__file__).resolve().is_relative_to(source.resolve()):
        raise SystemExit(f"imported {sam2.__file__}, not the official code under {source}")
    import sam2.modeling.backbones.timm as official_timm
    create = official_timm.create_model
    official_timm.create_model = lambda *a, **k: create(*a, **{**k, "pretrained": False})
    from sam2.build_sam import build_sam2, build_sam2_video_predictor
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    model = build_sam2(OFFICIAL_CONFIG, None, device="cpu")
    layout = [(name, tuple(value.shape)) for name, value in model.state_dict().items()]
    weights = reference_weights(layout, seed)
    model.load_state_dict(weights, strict=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = copy_frames(frames, Path(tmp) / "frames")
        image = image_outputs(SAM2ImagePredictor(model.eval()), load_frame(folder))
        predictor = build_sam2_video_predictor(OFFICIAL_CONFIG, None, device="cpu")
        predictor.load_state_dict(weights, strict=True)
        predictor.eval()
        (first,), (corrected,) = track(predictor, folder, [VIDEO_PROMPTS[0]], CORRECTION)
        videos = [first, track(predictor, folder, [VIDEO_PROMPTS[1]])[0], corrected]
    for i, run in enumerate(videos):
        shares = run["masks"].mean(axis=(1, 2))
        if not ((shares > 0.002) & (shares < 0.998)).all():
            raise SystemExit(f"video prompt {i}: mask shares {shares} per frame; the random model draws empty or "
                             "full masks, choose another --seed")
    height, width = image["image_masks"].shape[-2:]
    arrays = {"embed": image["embed"].astype(np.float16), "feat_s1": image["feat_s1"].astype(np.float16),
              "feat_s0": image["feat_s0"].astype(np.float16), "image_lowres": image["image_lowres"].astype(np.float16),
              "image_iou": image["image_iou"], "image_masks": pack(image["image_masks"])}
    for i, run in enumerate(videos):
        arrays.update({f"video{i}_lowres": run["lowres"].astype(np.float16), f"video{i}_score": run["score"],
                       f"video{i}_masks": pack(run["masks"])})
    import timm
    meta = {"format": FORMAT, "official": f"{OFFICIAL_REPO}@{OFFICIAL_COMMIT}:{OFFICIAL_CONFIG}", "seed": seed,
            "frames": list(FRAMES), "width": int(width), "height": int(height), "torch": torch.__version__,
            "timm": timm.__version__, "layout": [[n, list(s)] for n, s in layout],
            "weights_checksum": weights_checksum(weights), "procedure": "scripts/make_edgetam_reference.py"}
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(output, meta=np.array(json.dumps(meta)), **arrays)
    print(f"wrote {output} ({output.stat().st_size:,} bytes); mask shares per frame: "
          + "; ".join(", ".join(f"{s:.3f}" for s in run["masks"].mean(axis=(1, 2))) for run in videos))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official-src", help="a checkout of facebookresearch/EdgeTAM or its git directory "
                                               "(default: download the pinned commit's archive)")
    parser.add_argument("--frames", type=Path, default=DEFAULT_FRAMES, help="the bedroom frames folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)   # internal: the official code's folder
    args = parser.parse_args(argv)
    torch.set_num_threads(min(4, torch.get_num_threads()))
    if args.child is not None:
        run_official(args.child, args.frames, args.seed, args.output)
        return 0
    missing = [name for name in FRAMES if not (args.frames / name).is_file()]
    if missing:
        raise SystemExit(f"{args.frames} lacks {', '.join(missing)}: pass --frames (the shared bedroom frames)")
    with tempfile.TemporaryDirectory() as tmp:
        source = official_source(args.official_src, Path(tmp))
        # a child process, so that `import sam2` finds the official fork first and nothing of ours is imported
        env = {**os.environ, "PYTHONPATH": str(source), "PYTHONNOUSERSITE": "1"}
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(source),
                               "--frames", str(args.frames), "--seed", str(args.seed), "--output", str(args.output)],
                              env=env)
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
