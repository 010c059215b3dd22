"""Getting an official release file onto this machine, once, and making sure it is the same file
every time it is used.

Where a file is looked for, in order:

1. ``$REPVIT_WEIGHTS_DIR/<release file name>`` (offline machines: copy the release files there);
2. the torch hub cache, ``$TORCH_HOME/hub/checkpoints/<release file name>`` (where the official
   code and ``torch.hub`` put them too);
3. a download from ``$REPVIT_WEIGHTS_URL/<release file name>`` when that mirror is set, else from
   the release URL, into the cache.

A download is streamed into a temporary file beside its destination, checked for its full
length (and its pinned SHA-256, where the table has one), then renamed into place: an
interrupted or failed download never leaves a file under the release name. The official
files carry no checksum, so the SHA-256 of each file is recorded beside it
(``<file>.sha256``, in ``sha256sum`` format) the first time it is used and checked on every
later load; a file that changed is an error naming both digests.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

import torch

from ..progress_bar import Progress
from .checkpoint import CheckpointError
from .releases import Release

WEIGHTS_DIR_ENV = "REPVIT_WEIGHTS_DIR"
MIRROR_ENV = "REPVIT_WEIGHTS_URL"
_CHUNK = 1 << 20


class WeightsUnavailableError(CheckpointError):
    """No copy of a release file could be found or downloaded; the message says where to put one."""


class HashMismatchError(CheckpointError):
    """A release file differs from the one recorded (or pinned) for it."""


def cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def read_recorded_sha256(path: Path) -> Optional[str]:
    record = _record_path(path)
    if not record.is_file():
        return None
    text = record.read_text().split()
    return text[0].lower() if text else None


def _write_record(path: Path, digest: str) -> None:
    """``<digest>  <name>`` beside the file, written atomically (``sha256sum -c`` reads it)."""
    record = _record_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{record.name}.", suffix=".tmp", dir=record.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{digest}  {path.name}\n")
        os.replace(tmp, record)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def verify(path: Path, release: Release, *, log: Callable[[str], None]) -> str:
    """Check ``path`` against the pinned digest and the one recorded beside it; record it if none was."""
    digest = sha256_of(path)
    if release.sha256 and digest != release.sha256.lower():
        raise HashMismatchError(
            f"{path} is not the official {release.filename}: its SHA-256 is {digest}, the release's is "
            f"{release.sha256}. Delete it and load again to download a fresh copy.")
    recorded = read_recorded_sha256(path)
    if recorded is None:
        try:
            _write_record(path, digest)
            log(f"recorded SHA-256 {digest} of {path} (checked on every later load)")
        except OSError:  # a read-only weights folder: nothing to record into, the pin (if any) was checked
            pass
    elif recorded != digest:
        raise HashMismatchError(
            f"{path} changed since it was first used: its SHA-256 is now {digest}, recorded {recorded} "
            f"(in {_record_path(path)}). The file is corrupt or was replaced; delete both files and load again "
            "to download a fresh copy.")
    return digest


def locate(release: Release) -> Optional[Path]:
    """Where a copy of ``release`` already is (weights folder first, then the cache), without checking it."""
    weights_dir = os.environ.get(WEIGHTS_DIR_ENV, "").strip()
    for folder in ([Path(weights_dir).expanduser()] if weights_dir else []) + [cache_dir()]:
        if (folder / release.filename).is_file():
            return folder / release.filename
    return None


def download_url(release: Release) -> str:
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    return f"{mirror.rstrip('/')}/{release.filename}" if mirror else release.url


def fetch(release: Release, *, progress: bool = True, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)
          ) -> Path:
    """A verified local path of ``release``'s file: from the weights folder, the cache, or downloaded once."""
    weights_dir = os.environ.get(WEIGHTS_DIR_ENV, "").strip()
    looked = []
    if weights_dir:
        local = Path(weights_dir).expanduser() / release.filename
        if local.is_file():
            verify(local, release, log=log)
            return local
        looked.append(f"{local} ({WEIGHTS_DIR_ENV}): not there")
    cached = cache_dir() / release.filename
    if cached.is_file():
        verify(cached, release, log=log)
        return cached
    url = download_url(release)
    try:
        _download(url, cached, release, progress=progress, log=log)
    except HashMismatchError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        looked.append(f"{url}: {reason}")
        raise WeightsUnavailableError(
            f"could not get {release.filename} ({release.spec}):\n  " + "\n  ".join(looked) +
            f"\nOn a machine with access, fetch {release.url}\nand put it at {cached}"
            f"\nor into a folder named by {WEIGHTS_DIR_ENV}" +
            (f" (checked: {weights_dir})" if weights_dir else "") +
            f"; a mirror of the release files can be named with {MIRROR_ENV}=BASE_URL.") from None
    return cached


def _download(url: str, dest: Path, release: Release, *, progress: bool, log: Callable[[str], None]) -> None:
    """Stream ``url`` into a temporary file beside ``dest``; rename it into place only when complete."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    log(f"downloading {url} to {dest}")
    request = urllib.request.Request(url, headers={"User-Agent": "repvit"})
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=60) as response:
            expected = response.headers.get("Content-Length")
            expected = int(expected) if expected and expected.isdigit() else None
            digest, received = hashlib.sha256(), 0
            with _progress_bar(expected, release.filename, enabled=progress) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if expected is not None and received != expected:
                raise OSError(f"the connection closed after {received:,} of {expected:,} bytes; nothing was kept, "
                              "try again")
            out.flush()
            os.fsync(out.fileno())
        digest = digest.hexdigest()
        if release.sha256 and digest != release.sha256.lower():
            raise HashMismatchError(f"downloaded {url} but its SHA-256 is {digest}, the release's is "
                                    f"{release.sha256}; nothing was kept")
        os.replace(tmp, dest)
        _write_record(dest, digest)
        log(f"saved {dest} ({received:,} bytes, SHA-256 {digest})")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _progress_bar(total: Optional[int], name: str, *, enabled: bool) -> Progress:
    return Progress(total, desc=name, unit="B", enabled=enabled, unit_scale=True, unit_divisor=1024)
