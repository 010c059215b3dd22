"""Write tests/data/sam_encoder_reference.npz: what the OFFICIAL RepViT-SAM image encoder computes.

tests/test_sam_reference.py compares our encoder with this file. The official code is obtained
when this script runs and is never stored in this repository: the one file the encoder needs,
``sam/repvit_sam/modeling/repvit.py`` of THU-MIG/RepViT (it imports only torch and timm), is read
from ``--official-src`` (a checkout of the repository or its git directory) or, without that
option, from GitHub's archive of the pinned commit.

Procedure (the test repeats the first two steps without the official code):
1. weights: for every tensor of the official encoder's state dict, in its own order, draw values
   from one ``torch.Generator`` seeded with ``--seed`` (``reference_weights`` below says how each
   kind of tensor is drawn: convolution weights scaled by fan-in, BatchNorm statistics in a sane
   range, LayerNorm/BatchNorm scales around 1), so every term of every block matters;
2. input: a ``(1, 3, 96, 128)`` standard-normal batch from a generator seeded ``seed + 1`` (non-square, so
   height and width cannot be swapped unnoticed; 96x128 keeps the run fast and the file small);
3. the official module, in eval mode, computes the stride-16 feature map before the neck and the
   256-channel embedding after it; both are stored in float32 with the layout (names and shapes)
   and a checksum of the drawn weights, so a change of torch's random stream is told apart from a
   change of our encoder.

    python scripts/make_sam_reference.py --official-src /path/to/RepViT   # a checkout or its .git
    python scripts/make_sam_reference.py                                  # downloads the archive
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

OFFICIAL_REPO = "THU-MIG/RepViT"
OFFICIAL_COMMIT = "298f42075eda5d2e6102559fad260c970769d34e"   # 2024-06-14; the encoder file last changed 2023-12-14
OFFICIAL_FILE = "sam/repvit_sam/modeling/repvit.py"
INPUT_SHAPE = (1, 3, 96, 128)
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "sam_encoder_reference.npz"
FORMAT = "repvit-sam-encoder-reference"


# --------------------------------------------------------------------------- shared with the test
def reference_weights(layout: list[tuple[str, tuple[int, ...]]], seed: int) -> dict[str, torch.Tensor]:
    """Seeded values for every ``(name, shape)`` of ``layout``, drawn in that order.

    Convolution and linear weights: normal, std 0.5/sqrt(fan_in) (small enough that ~50 residual
    blocks stay finite in float32); BatchNorm running means N(0, 0.1^2), running variances
    U(0.5, 1.5); other 1-D ``weight``s (BatchNorm/LayerNorm scales) 1 + N(0, 0.2^2); biases
    N(0, 0.1^2); ``num_batches_tracked`` 0 (drawn nothing).
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in layout:
        if name.endswith("num_batches_tracked"):
            out[name] = torch.zeros(shape, dtype=torch.long)
        elif name.endswith("running_var"):
            out[name] = 0.5 + torch.rand(shape, generator=gen)
        elif name.endswith("running_mean") or name.endswith("bias"):
            out[name] = 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            out[name] = torch.randn(shape, generator=gen) * (0.5 / fan_in ** 0.5)
        else:
            out[name] = 1 + 0.2 * torch.randn(shape, generator=gen)
    return out


def reference_input(seed: int) -> torch.Tensor:
    """The input batch, from its own generator (seed + 1), so it does not depend on the layout."""
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randn(INPUT_SHAPE, generator=gen)


def weights_checksum(weights: dict[str, torch.Tensor]) -> float:
    """Sum of |value| over all drawn tensors, in float64: equal drawn weights give equal sums."""
    return float(sum(v.double().abs().sum() for v in weights.values()))


# --------------------------------------------------------------------------- obtaining the official code
def official_source(src: str | None, dest: Path) -> Path:
    """Write the official encoder file into ``dest`` and return its path."""
    target = dest / "official_repvit_sam.py"
    if src is None:
        url = f"https://codeload.github.com/{OFFICIAL_REPO}/tar.gz/{OFFICIAL_COMMIT}"
        print(f"downloading {url}", file=sys.stderr)
        with urllib.request.urlopen(url, timeout=120) as response:
            archive = tarfile.open(fileobj=io.BytesIO(response.read()), mode="r:gz")
        member = next(m for m in archive.getmembers() if m.name.endswith("/" + OFFICIAL_FILE))
        target.write_bytes(archive.extractfile(member).read())
        return target
    root = Path(src)
    if (root / OFFICIAL_FILE).is_file():
        target.write_bytes((root / OFFICIAL_FILE).read_bytes())
        return target
    if (root / "HEAD").is_file() and (root / "objects").is_dir():   # a (bare) git directory
        for ref in (OFFICIAL_COMMIT, "HEAD"):
            done = subprocess.run(["git", "--git-dir", str(root), "show", f"{ref}:{OFFICIAL_FILE}"],
                                  capture_output=True)
            if done.returncode == 0:
                if ref != OFFICIAL_COMMIT:
                    print(f"warning: {OFFICIAL_COMMIT} is not in {root}; using its HEAD", file=sys.stderr)
                target.write_bytes(done.stdout)
                return target
    raise SystemExit(f"--official-src {src!r}: neither a checkout holding {OFFICIAL_FILE} nor a git directory of "
                     f"{OFFICIAL_REPO}")


def official_encoder(path: Path) -> torch.nn.Module:
    """The official RepViT-SAM image encoder (``repvit()`` of the official file), in eval mode."""
    spec = importlib.util.spec_from_file_location("official_repvit_sam", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # timm's @register_model looks its module up there
    spec.loader.exec_module(module)
    return module.repvit().eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official-src", help="a checkout of THU-MIG/RepViT or its git directory "
                                               "(default: download the pinned commit's archive)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(min(4, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        encoder = official_encoder(official_source(args.official_src, Path(tmp)))
    layout = [(name, tuple(value.shape)) for name, value in encoder.state_dict().items()]
    weights = reference_weights(layout, args.seed)
    encoder.load_state_dict(weights, strict=True)
    x = reference_input(args.seed)
    with torch.no_grad():
        features = x
        for block in encoder.features:
            features = block(features)
        embedding = encoder.neck(features)
        if not torch.equal(encoder(x), embedding):
            raise SystemExit("the official forward is not features then neck; update this script")
    if not (torch.isfinite(features).all() and torch.isfinite(embedding).all()):
        raise SystemExit("non-finite official outputs: the weight scales in reference_weights are too large")
    meta = {"format": FORMAT, "official": f"{OFFICIAL_REPO}@{OFFICIAL_COMMIT}:{OFFICIAL_FILE}", "seed": args.seed,
            "input_shape": list(INPUT_SHAPE), "torch": torch.__version__, "layout": [[n, list(s)] for n, s in layout],
            "weights_checksum": weights_checksum(weights), "procedure": "scripts/make_sam_reference.py"}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.output, meta=np.array(json.dumps(meta)), features=features.numpy(),
                        embedding=embedding.numpy())
    print(f"wrote {args.output} ({args.output.stat().st_size / 1024:.0f} KiB): {len(layout)} tensors, features "
          f"{tuple(features.shape)} (|max| {features.abs().max():.3g}), embedding {tuple(embedding.shape)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
