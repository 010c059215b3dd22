"""A folder of a server's output files that never grows past a bound (the demo pages' masks and videos).

Without a folder given, a temporary one is made and removed with its files on ``close()``, when
the object is garbage-collected or when the process exits.

This module is a bottom layer: it imports nothing from ``repvit``.
"""
from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
import weakref
from collections import deque
from pathlib import Path
from typing import Union

import numpy as np


class BoundedFolder:
    """A folder of output files holding at most ``keep`` of them: adding one more deletes the oldest.

    Without ``folder`` a temporary one is made, and deleted with its files by ``close()`` or when
    the object is garbage-collected or the process exits. A given folder is never removed; only the
    files written here are ever deleted from it.
    """

    def __init__(self, folder: Union[str, Path, None] = None, *, keep: int, prefix: str = "repvit-"):
        if keep < 1:
            raise ValueError(f"keep must be at least 1 file, got {keep}")
        self.keep = keep
        self.folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix=prefix))
        self.folder.mkdir(parents=True, exist_ok=True)
        self._written: deque = deque()
        self._lock = threading.Lock()
        self._remove_folder = (weakref.finalize(self, shutil.rmtree, str(self.folder), ignore_errors=True)
                               if folder is None else None)

    def write(self, array: np.ndarray, stem: str) -> str:
        """Save ``array`` as ``<stem>-<random>.png``; returns its path."""
        from PIL import Image
        path = self.new_path(stem, ".png")
        Image.fromarray(array).save(path)
        return str(path)

    def new_path(self, stem: str, suffix: str) -> Path:
        """A fresh ``<stem>-<random><suffix>`` in the folder for the caller to write, counted as written."""
        path = self.folder / f"{stem}-{uuid.uuid4().hex[:12]}{suffix}"
        with self._lock:
            self._written.append(path)
            while len(self._written) > self.keep:
                self._written.popleft().unlink(missing_ok=True)
        return path

    def files(self) -> list:
        with self._lock:
            return [p for p in self._written if p.exists()]

    def close(self) -> None:
        """Delete the files written here (and the folder, when it is a temporary one)."""
        with self._lock:
            while self._written:
                self._written.popleft().unlink(missing_ok=True)
        if self._remove_folder is not None:
            self._remove_folder()
