"""Options every ``repvit sam`` action shares: where the SAM weights come from."""
from __future__ import annotations


def add_sam_weights(p, *, unfused: bool = True) -> None:
    """The weights options; ``unfused=False`` for an action that always uses the fused encoder (export)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", "-w", metavar="FILE",
                   help="whole-SAM weights: the official repvit_sam.pt layout or a file written by `repvit sam`")
    g.add_argument("--pretrained", action="store_true",
                   help="the official repvit_sam.pt (downloaded once into the torch hub cache)")
    g.add_argument("--random-weights", action="store_true",
                   help="deterministic random weights (seed 0): checks the pipeline, the masks mean nothing")
    if unfused:
        p.add_argument("--unfused", action="store_true",
                       help="keep the encoder's BatchNorms and branches (for comparison)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ... (default: cpu)")


def load_sam(args):
    """The SAM model the options name, fused unless --unfused (where offered), on --device, in eval mode."""
    import torch
    from ..sam.builder import build_sam
    if not (args.checkpoint or args.pretrained or args.random_weights):
        raise ValueError("say which weights to use: --checkpoint FILE, --pretrained (official repvit_sam.pt) or "
                         "--random-weights (pipeline check only)")
    if args.random_weights:
        torch.manual_seed(0)
    sam = build_sam(args.checkpoint, pretrained=args.pretrained, fused=not getattr(args, "unfused", False))
    return sam.to(args.device)
