"""``repvit weights``: the official release files, where a copy is on this machine, and fetching them.

To prepare an offline machine: ``TORCH_HOME=/tmp/w repvit weights --download all`` on one that is
online, then copy ``/tmp/w/hub/checkpoints`` over and point ``REPVIT_WEIGHTS_DIR`` at it (the
``.sha256`` records travel with the files and are checked there).
"""
from __future__ import annotations

import json

from . import _grammar as grammar


def run(args) -> int:
    from ..models.pretrained import fetch, locate, read_recorded_sha256
    from ..models.releases import RELEASES, release_by_spec
    if args.download:
        wanted = list(RELEASES) if args.download == ["all"] else [release_by_spec(s) for s in args.download]
        for release in wanted:
            path = fetch(release, progress=not args.json)
            print(f"{release.spec}: {path} (SHA-256 {read_recorded_sha256(path)})")
        return 0
    rows = []
    for release in RELEASES:
        where = locate(release)
        rows.append({"spec": release.spec, "kind": release.kind, "paper": release.paper, "file": release.filename,
                     "url": release.url, "local": str(where) if where else None, "pinned_sha256": release.sha256})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'NAME:TAG':<22} {'kind':<14} {'paper':<26} local copy")
    for row in rows:
        paper = ", ".join(f"{k} {v}" for k, v in row["paper"].items()) or "-"
        print(f"{row['spec']:<22} {row['kind']:<14} {paper:<26} {row['local'] or 'not here (' + row['file'] + ')'}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("weights", help="list the official release files and fetch them",
                              description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("--download", nargs="+", metavar="NAME[:TAG]",
                   help="fetch these into the torch hub cache (verified); 'all' fetches every release file")
    grammar.add(p, "--json")
    p.set_defaults(func=run)
