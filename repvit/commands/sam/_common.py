"""Options every ``repvit sam`` action shares: where the SAM weights come from, and the device."""
from __future__ import annotations

from .. import _grammar as grammar

SAM_RELEASE = "repvit_sam"


def add_sam_weights(p, *, unfused: bool = True) -> None:
    g = p.add_mutually_exclusive_group()
    grammar.add(g, "--checkpoint", help="whole-SAM weights: the official repvit_sam.pt layout or a file written "
                                        "by `repvit sam`")
    grammar.add(g, "--pretrained", action=grammar.NameOrBare, bare=SAM_RELEASE,
                help=f"official weights: {SAM_RELEASE} (downloaded once into the torch hub cache)")
    grammar.add(g, "--random-weights", help="deterministic random weights (seed 0): checks the pipeline, the masks "
                                            "mean nothing")
    grammar.add_deprecated(g, "-w", "--checkpoint", dest="checkpoint")
    if unfused:
        grammar.add(p, "--unfused", help="keep the encoder's BatchNorms and branches (for comparison)")
    grammar.add(p, "--device")


def check_pretrained(spec):
    """``--pretrained`` of a SAM action names the one SAM release; anything else says what to write."""
    if spec is None:
        return False
    from ...models.releases import parse_spec
    name, tag = parse_spec(spec)
    if name != SAM_RELEASE or tag not in (None, "sam"):
        raise ValueError(f"--pretrained {spec}: RepViT-SAM's official weights are --pretrained {SAM_RELEASE} "
                         "(ImageNet classifiers such as repvit_m2_3 are not SAM models)")
    return True


def describe_weights(args) -> str:
    if getattr(args, "random_weights", False):
        return "random (seed 0)"
    return "official repvit_sam.pt" if args.pretrained else str(args.checkpoint)


def load_sam(args):
    """The SAM model the options name, fused unless --unfused, on --device, in eval mode."""
    import torch
    from ...engine.distributed import pick_device
    from ...sam.builder import build_sam
    pretrained = check_pretrained(args.pretrained)
    if not (args.checkpoint or pretrained or args.random_weights):
        raise ValueError(f"say which weights to use: --checkpoint PATH, --pretrained {SAM_RELEASE} (official) or "
                         "--random-weights (pipeline check only)")
    if args.random_weights:
        torch.manual_seed(0)
    sam = build_sam(args.checkpoint, pretrained=pretrained, fused=not getattr(args, "unfused", False))
    device = pick_device(args.device)
    args.device = str(device)  # what reports record: the device used, not "auto"
    return sam.to(device)
