"""The project's one strict state-dict loader.

Every place that copies saved weights into a module (classification checkpoints, dense records,
RepViT-SAM files, the SAM encoder's backbone, the distillation teacher and decoder) goes through
``load_strict``: it compares names AND shapes before anything is copied, so a file that does not
fit fails as one ``CheckpointError`` listing what is missing, what is unexpected and what has the
wrong shape (name, the model's shape, the file's shape), followed by the caller's advice on how to
fix it. ``torch``'s own ``load_state_dict`` would report the same problems as a ``RuntimeError``
(or not at all with ``strict=False``), and half-load the module in the second case.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

SHOWN = 5   # entries listed per kind; the counts are always complete


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not fit the model; the message says what to do."""

    def __init__(self, message: str, mismatch: Optional["Mismatch"] = None):
        super().__init__(message)
        self.mismatch = mismatch


@dataclass
class Mismatch:
    """How a state dict differs from a module's: ``missing`` (name, model shape), ``unexpected``
    (name, file shape) and ``wrong_shape`` (name, model shape, file shape), each in natural key order."""
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    wrong_shape: list = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong_shape)

    @property
    def missing_keys(self) -> list[str]:
        return [k for k, _ in self.missing]

    @property
    def unexpected_keys(self) -> list[str]:
        return [k for k, _ in self.unexpected]

    @property
    def wrong_shape_keys(self) -> list[str]:
        return [k for k, _, _ in self.wrong_shape]

    def describe(self) -> list[str]:
        """Indented lines naming the first few of each kind, with the full counts."""
        lines = []
        if self.missing:
            lines.append(f"  missing from the file ({len(self.missing)}):")
            lines += [f"    {k} (model {_shape(s)})" for k, s in self.missing[:SHOWN]]
            lines += _more(self.missing)
        if self.unexpected:
            lines.append(f"  unexpected, not in the model ({len(self.unexpected)}):")
            lines += [f"    {k} (file {_shape(s)})" for k, s in self.unexpected[:SHOWN]]
            lines += _more(self.unexpected)
        if self.wrong_shape:
            lines.append(f"  mis-shaped ({len(self.wrong_shape)}):")
            lines += [f"    shape of {k}: model {_shape(want)}, file {_shape(got)}"
                      for k, want, got in self.wrong_shape[:SHOWN]]
            lines += _more(self.wrong_shape)
        return lines


Ignore = Union[str, Sequence[str], Callable[[str], bool], None]
Fix = Union[str, Sequence[str], Callable[[Mismatch], Union[str, Sequence[str], None]], None]


def compare(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> Mismatch:
    """The differences between a module's ``expected`` state dict and ``state``, by name and shape."""
    missing = [(k, tuple(expected[k].shape)) for k in sorted(set(expected) - set(state), key=natural_key)]
    unexpected = [(k, _shape_of(state[k])) for k in sorted(set(state) - set(expected), key=natural_key)]
    wrong = [(k, tuple(expected[k].shape), _shape_of(state[k])) for k in sorted(set(expected) & set(state),
                                                                                key=natural_key)
             if _shape_of(state[k]) != tuple(expected[k].shape)]
    return Mismatch(missing, unexpected, wrong)


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], *, source: str, what: Optional[str] = None,
                fix: Fix = None, ignore: Ignore = None) -> None:
    """Copy ``state`` into ``module`` only if every name and shape agrees; otherwise raise ``CheckpointError``.

    ``source`` names the file (or ``state dict``) for the message, ``what`` the model (default: its
    class name). ``fix`` is the advice printed after the differences: a sentence, several, or a
    function of the ``Mismatch`` returning them. ``ignore``: key prefixes (or a predicate) left out
    on both sides; the module keeps its own values there (a new classifier head, say). BatchNorm's
    ``num_batches_tracked`` counters are bookkeeping that older files lack; a missing one keeps the
    module's value.
    """
    skip = _ignore_predicate(ignore)
    expected = {k: v for k, v in module.state_dict().items() if not skip(k)}
    state = {k: v for k, v in state.items() if not skip(k)}
    for key in expected.keys() - state.keys():
        if key.endswith("num_batches_tracked"):
            state[key] = expected[key]
    mismatch = compare(expected, state)
    if mismatch:
        raise CheckpointError(mismatch_message(mismatch, source=source, what=what or type(module).__name__, fix=fix),
                              mismatch)
    if skip is not _keep_all:
        state = {**{k: v for k, v in module.state_dict().items() if skip(k)}, **state}
    module.load_state_dict(state, strict=True)


def mismatch_message(mismatch: Mismatch, *, source: str, what: str, fix: Fix = None) -> str:
    counts = (f"{len(mismatch.missing)} missing, {len(mismatch.unexpected)} unexpected, "
              f"{len(mismatch.wrong_shape)} mis-shaped tensors")
    lines = [f"{source} does not fit {what}: {counts}", *mismatch.describe()]
    hints = fix(mismatch) if callable(fix) else fix
    if isinstance(hints, str):
        hints = [hints]
    hints = [h for h in (hints or []) if h]
    if hints:
        lines.append("How to fix: " + "; ".join(hints))
    return "\n".join(lines)


def natural_key(key: str):
    """Sort key that puts ``features.10`` after ``features.9``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _ignore_predicate(ignore: Ignore) -> Callable[[str], bool]:
    if ignore is None:
        return _keep_all
    if callable(ignore):
        return ignore
    prefixes = (ignore,) if isinstance(ignore, str) else tuple(ignore)
    return (lambda key: key.startswith(prefixes)) if prefixes else _keep_all


def _keep_all(key: str) -> bool:
    return False


def _shape_of(value) -> tuple:
    return tuple(value.shape) if hasattr(value, "shape") else ()


def _shape(shape: tuple) -> str:
    return str(tuple(shape))


def _more(items: list) -> list[str]:
    return [f"    ... and {len(items) - SHOWN} more"] if len(items) > SHOWN else []
