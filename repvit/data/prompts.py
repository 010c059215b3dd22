"""Point and box prompts as users write them, shared by RepViT-SAM (one image) and EdgeTAM (a video).

Coordinates are pixels of the original image or frame, x right and y down. A point is
``(x, y, label)`` with SAM's labels: 1 on the object, 0 background. A box is ``(x0, y0, x1, y1)``,
the top-left and bottom-right corners. The command line writes them ``X,Y[,LABEL]`` and
``X0,Y0,X1,Y1``; a prompt file is a JSON list of objects with ``points`` and/or ``box`` (and the
keys a caller allows besides, such as EdgeTAM's ``object`` and ``frame``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union


@dataclass
class Prompt:
    """One object to segment: any number of labelled points and at most one box."""

    points: list = field(default_factory=list)     # [(x, y, label), ...]
    box: Optional[tuple] = None                    # (x0, y0, x1, y1)

    def check(self, width: int, height: int, *, where: str = "", picture: str = "image") -> None:
        """Raise ``ValueError`` for an empty prompt, a label other than 0/1, a point or a box corner outside
        the ``width`` x ``height`` picture, or a box whose corners are not top-left then bottom-right;
        ``where`` (e.g. "object 2 on frame 5") starts each message."""
        lead = f"{where}: " if where else ""
        if not self.points and self.box is None:
            raise ValueError(f"{lead}a prompt needs at least one point or a box")
        for x, y, label in self.points:
            if label not in (0, 1):
                raise ValueError(f"{lead}point ({x}, {y}) has label {label}: use 1 (object) or 0 (background)")
            if not (0 <= x <= width and 0 <= y <= height):
                raise ValueError(f"{lead}point ({x}, {y}) lies outside the {width}x{height} {picture}")
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if x1 <= x0 or y1 <= y0:
                raise ValueError(f"{lead}box {self.box} must be X0,Y0,X1,Y1 with X1 > X0 and Y1 > Y0")
            if not (0 <= x0 and 0 <= y0 and x1 <= width and y1 <= height):
                raise ValueError(f"{lead}box {self.box} reaches outside the {width}x{height} {picture}: "
                                 f"keep it within 0-{width} and 0-{height}")

    def as_dict(self) -> dict:
        return {"points": [list(p) for p in self.points], "box": None if self.box is None else list(self.box)}


def parse_point(text: str) -> tuple:
    """``"X,Y"`` or ``"X,Y,LABEL"`` -> ``(x, y, label)`` (label 1 when omitted); the label is checked by
    ``Prompt.check``."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        if len(parts) == 2:
            return float(parts[0]), float(parts[1]), 1
        if len(parts) == 3:
            return float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        pass
    raise ValueError(f"point {text!r}: expected X,Y or X,Y,LABEL in image pixels (LABEL 1 object, 0 background), "
                     "e.g. 320,240 or 50,60,0")


def parse_points(text: str) -> list:
    """``"X,Y,LABEL"`` per line (or separated by ``;``) -> ``[(x, y, label)]``; LABEL defaults to 1."""
    points = []
    for item in str(text or "").replace(";", "\n").splitlines():
        if item.strip():
            point = parse_point(item.strip())
            if point[2] not in (0, 1):
                raise ValueError(f"point {item.strip()!r}: LABEL is 1 (object) or 0 (background), "
                                 "so write X,Y or X,Y,LABEL")
            points.append(point)
    return points


def parse_box(text: str) -> tuple:
    """``"X0,Y0,X1,Y1"`` -> four floats (the command line's ``--box`` and the demo page's box field)."""
    parts = [p.strip() for p in str(text or "").split(",")]
    try:
        if len(parts) == 4:
            return tuple(float(p) for p in parts)
    except ValueError:
        pass
    raise ValueError(f"box {text!r}: expected X0,Y0,X1,Y1 in image pixels (top-left and bottom-right corners)")


def read_prompt_entries(path: Union[str, os.PathLike], extra_keys: Sequence[str] = ()) -> list[dict]:
    """The entries of a prompt file, each a dict with ``points`` (a list of ``(x, y, label)``) and
    ``box`` (a 4-tuple or None), plus any of ``extra_keys`` the entry has, unconverted. Every error
    names the file and, for a bad entry, its index and the keys allowed."""
    path = str(path)
    try:
        items = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"prompt file {path!r} does not exist") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"prompt file {path!r} is not valid JSON: {err}") from None
    if not isinstance(items, list):
        raise ValueError(f"prompt file {path!r} must hold a JSON list of prompts")
    allowed = {"points", "box", *extra_keys}
    entries = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) - allowed:
            optional = f" (and optional {', '.join(repr(k) for k in extra_keys)})" if extra_keys else ""
            raise ValueError(f"prompt {i} of {path!r}: expected an object with 'points' and/or 'box'{optional}, "
                             f"got {item!r}")
        try:
            points = [(float(p[0]), float(p[1]), int(p[2]) if len(p) > 2 else 1) for p in item.get("points") or []]
            box = item.get("box")
            box = None if box is None else tuple(float(v) for v in box)
        except (TypeError, ValueError, IndexError) as err:
            raise ValueError(f"prompt {i} of {path!r}: {err}") from None
        if box is not None and len(box) != 4:
            raise ValueError(f"prompt {i} of {path!r}: a box is [x0, y0, x1, y1], got {len(box)} numbers")
        entries.append({**{k: item[k] for k in extra_keys if k in item}, "points": points, "box": box})
    return entries


def read_prompt_file(path: Union[str, os.PathLike]) -> list[Prompt]:
    """A JSON list of ``{"points": [[x, y, label], ...], "box": [x0, y0, x1, y1]}`` objects."""
    return [Prompt(e["points"], e["box"]) for e in read_prompt_entries(path)]
