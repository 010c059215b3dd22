"""Frames that stream in one at a time, from any source a tracker reads.

``open_source`` opens a source as a ``FrameSource``, an iterator of ``Frame``s holding one frame at a
time however long the source: a folder of frames (JPEG, PNG, BMP, WebP) read lazily in natural order
(``2.jpg`` before ``10.jpg``); a video file decoded incrementally by PyAV; a camera (an int or
``/dev/videoN``: V4L2 through PyAV); an ``rtsp://``, ``http(s)://``, ``rtmp``, ``udp`` or ``srt`` URL;
or ``-``: raw RGB24 frames on stdin, ``width * height * 3`` bytes each, back to back, no header (what
``ffmpeg -f rawvideo -pix_fmt rgb24 -`` writes), their size given as ``size=(w, h)``.

Cameras, URLs and stdin are live: a reader thread keeps only the newest frame, so a slow consumer
never builds a queue; frames overwritten before they were taken count in ``dropped``. An unreadable
frame (a truncated JPEG, a packet that does not decode) is skipped and listed in ``skipped``; a
source that breaks mid-way ends the iteration with ``stop_reason`` saying why, never an exception.
Files and folders read from any frame, forward or backward (``start=``, ``reverse=True``): a tracker
prompted on a later frame tracks back to frame 0 by opening the file again, never by holding it.
The other end is ``LiveVideoWriter`` (``repvit.data.video``), re-exported here.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Optional, Union
from urllib.parse import urlsplit

import numpy as np

from . import video as _video
from .video import IMAGE_SUFFIXES, VIDEO_SUFFIXES, LiveVideoWriter, _natural_key, _one_line, _rgb

__all__ = ["Frame", "FrameSource", "LiveVideoWriter", "SourceNotFound", "SourceUnavailable", "count_frames",
           "from_iterable", "list_videos", "open_source", "read_frames"]

URL_SCHEMES = ("rtsp", "rtsps", "http", "https", "rtmp", "rtmps", "udp", "srt")
Spec = Union[str, "os.PathLike[str]", int]


class SourceUnavailable(ValueError):
    """A source that cannot be opened; the message says what was tried and what to do."""


class SourceNotFound(SourceUnavailable, FileNotFoundError):
    """A path, folder or camera that does not exist (or a folder without frames)."""


class Frame(NamedTuple):
    """One frame: ``index`` counts the frames yielded (0, 1, ...); ``source_index`` is its number in
    the source (a file's frame number, with ``every`` and ``start``; a live source's count of
    frames read, so a gap means drops); ``timestamp_s`` the container's presentation time, if any."""

    index: int
    image: np.ndarray       # HxWx3 uint8 RGB
    timestamp_s: Optional[float]
    source_index: int


class _Item(NamedTuple):
    source_index: int
    image: Optional[np.ndarray]     # None: unreadable, ``reason`` says why
    timestamp_s: Optional[float] = None
    reason: str = ""


class FrameSource:
    """An iterator of ``Frame``s and what a run records of its source: ``kind`` (folder, video, camera,
    url, stdin, iterable), ``description``, ``fps`` and ``size`` ((w, h)) (None when unknown), ``live``,
    ``dropped``, ``skipped`` (``[{"index", "reason"}]``), ``stop_reason`` (``"end of stream"``, ``"max
    frames"``, ``"source error: ..."``, ``"closed"``; None while it runs). ``close()`` or ``with``."""

    def __init__(self, items: Iterator[_Item], *, kind: str, description: str, live: bool = False,
                 fps: Optional[float] = None, size: Optional[tuple] = None, max_frames: Optional[int] = None,
                 on_close: Optional[Callable[[], None]] = None, pace: bool = False):
        self.kind, self.description, self.live, self.fps, self.size = kind, description, live, fps, size
        self.skipped: list = []
        self.stop_reason: Optional[str] = None
        self._max, self._count = max_frames, 0
        reader = _NewestFrame if live else _InTurn
        self._reader = reader(_readable(items, self.skipped), lambda: _release(items, on_close), pace=pace)

    @property
    def dropped(self) -> int:
        return self._reader.dropped

    def __iter__(self) -> "FrameSource":
        return self

    def __next__(self) -> Frame:
        if self.stop_reason is None and self._max is not None and self._count >= self._max:
            self._finish("max frames")
        if self.stop_reason is None:
            item, end = self._reader.take()
            if item is not None:
                self.size = self.size or (item.image.shape[1], item.image.shape[0])
                self._count += 1
                return Frame(self._count - 1, item.image, item.timestamp_s, item.source_index)
            self._finish(end)
        raise StopIteration

    def _finish(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason
        self._reader.stop()

    def close(self) -> None:
        """Stop reading and release the source (``stop_reason`` is ``"closed"`` if it was running)."""
        self._finish("closed")

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _readable(items: Iterator[_Item], skipped: list) -> Iterator[_Item]:
    for item in items:
        if item.image is None:
            skipped.append({"index": item.source_index, "reason": item.reason})
        else:
            yield item


def _release(items: Iterator, on_close: Optional[Callable[[], None]]) -> None:
    items.close()   # a generator, closed in the thread that ran it
    if on_close is not None:
        on_close()


class _InTurn:
    """Files and folders: the consumer reads each frame when it asks for one (it sets the pace)."""

    dropped = 0

    def __init__(self, frames: Iterator[_Item], release: Callable[[], None], *, pace: bool = False):
        self._frames, self._release = frames, release

    def take(self) -> tuple:
        try:
            return next(self._frames), None
        except StopIteration:
            return None, "end of stream"
        except Exception as err:   # a broken source ends the stream; the caller finishes its outputs
            return None, f"source error: {_one_line(err)}"

    def stop(self) -> None:
        self._frames.close()
        self._release()   # again after the end is harmless: generators and PyAV containers close once


class _NewestFrame:
    """Live sources: a reader thread keeps only the newest frame, each one overwritten before it was
    taken counts in ``dropped``. With ``pace``, a file read live plays at its own rate."""

    def __init__(self, frames: Iterator[_Item], release: Callable[[], None], *, pace: bool = False):
        self._cond = threading.Condition()
        self.dropped, self._stopping = 0, False
        self._slot: Optional[_Item] = None      # the newest frame, not taken yet
        self._end: Optional[str] = None         # why the reader stopped
        self._thread = threading.Thread(target=self._run, args=(frames, release, pace), daemon=True)
        self._thread.start()

    def _run(self, frames: Iterator[_Item], release: Callable[[], None], pace: bool) -> None:
        end, origin = "end of stream", None
        try:
            for item in frames:
                if self._stopping:
                    break
                if pace and item.timestamp_s is not None:
                    origin = time.monotonic() - item.timestamp_s if origin is None else origin
                    time.sleep(max(0.0, origin + item.timestamp_s - time.monotonic()))
                with self._cond:
                    self.dropped += self._slot is not None
                    self._slot = item
                    self._cond.notify()
        except Exception as err:   # reported through stop_reason, never raised in the consumer
            end = f"source error: {_one_line(err)}"
        finally:
            try:
                release()   # closes ``frames``' source too
            finally:
                with self._cond:
                    self._end = end
                    self._cond.notify()

    def take(self) -> tuple:
        with self._cond:
            while self._slot is None and self._end is None:
                self._cond.wait(0.25)   # a timed wait lets Ctrl-C through
            item, self._slot = self._slot, None
            return item, (self._end if item is None else None)

    def stop(self, wait_s: float = 2.0) -> None:
        self._stopping = True   # a reader blocked on a device or a pipe is a daemon thread: left behind
        self._thread.join(wait_s)


def open_source(spec: Spec, *, every: int = 1, max_frames: Optional[int] = None, live: Optional[bool] = None,
                start: int = 0, reverse: bool = False, size: Optional[tuple] = None, fps: Optional[float] = None,
                timeout_s: float = 5.0) -> FrameSource:
    """``spec`` (see the module docstring) as a ``FrameSource``. ``every``: every Nth frame
    (``source_index`` keeps the source's numbering); ``max_frames``: stop after that many; ``live``:
    overrides the default (a file read live plays at its own rate, the consumer missing what it
    misses); ``start``, ``reverse``: files and folders read from frame ``start``, forward or back to
    frame 0; ``size``: stdin's frame size (required), a camera's requested size; ``fps``: a camera's
    requested rate, stdin's rate (for timestamps); ``timeout_s``: the most opening a camera or URL
    may take (a URL's read gives up after ``max(timeout_s, 10)`` s without data). Raises
    ``SourceNotFound``/``SourceUnavailable`` (both ``ValueError``) naming what was tried."""
    if every < 1 or (max_frames is not None and max_frames < 1) or start < 0:
        raise ValueError(f"every must be >= 1, max_frames >= 1 and start >= 0 (got {every}, {max_frames}, {start})")
    text = "" if isinstance(spec, int) else str(spec)
    scheme = urlsplit(text).scheme.lower() if "://" in text else ""
    seekable = not (isinstance(spec, int) or text == "-" or text.startswith("/dev/video") or scheme)
    if (start or reverse) and not seekable:
        raise ValueError(f"{spec}: start= and reverse= need a file or a folder, not a live source")
    if isinstance(spec, int) or text.startswith("/dev/video"):
        source = _open_camera(spec, size, fps, timeout_s, every)
    elif scheme not in URL_SCHEMES + ("",):
        raise SourceUnavailable(f"{text}: {scheme}:// is not a stream address read here ({', '.join(URL_SCHEMES)})")
    elif scheme:
        source = _open_url(text, scheme, timeout_s, every)
    elif text == "-":
        source = _open_stdin(size, fps, every)
    else:
        path = Path(spec)
        if path.is_dir():
            source = _open_folder(path, start, every, reverse)
        elif not path.exists():
            raise SourceNotFound(f"{path}: no such frame folder or video file")
        elif path.suffix.lower() not in VIDEO_SUFFIXES:
            raise SourceUnavailable(f"{path}: not a frame folder or a video file ({' '.join(VIDEO_SUFFIXES)}); "
                                    "for still images give the folder that holds them")
        else:
            source = _open_video(path, start, every, reverse)
    is_live = not seekable if live is None else live   # cameras, URLs and stdin are live
    return FrameSource(**source, live=is_live, max_frames=max_frames, pace=is_live and seekable)


def from_iterable(images: Iterable[np.ndarray], *, live: bool = True, fps: Optional[float] = None,
                  description: str = "frames", every: int = 1, max_frames: Optional[int] = None) -> FrameSource:
    """A ``FrameSource`` over any iterable of HxWx3 uint8 RGB arrays (a browser's camera, a
    generator): live by default, so the newest frame wins exactly as for a camera."""
    items = (_Item(i, image) for i, image in enumerate(images) if i % every == 0)
    return FrameSource(items, kind="iterable", description=description, live=live, fps=fps, max_frames=max_frames)


def read_frames(spec: Spec, *, every: int = 1, max_frames: Optional[int] = None) -> list:
    """A short file or folder read whole, as a list of HxWx3 uint8 RGB arrays (every ``every``-th frame,
    at most ``max_frames``): for benchmarks and tests that replay the same frames several times."""
    with open_source(spec, every=every, max_frames=max_frames) as source:
        return [frame.image for frame in source]


def count_frames(spec: Spec) -> int:
    """The number of frames of a folder (its image files) or a video file (its video packets, without
    decoding: one a frame for ordinary files). A live source has no length: ``ValueError``."""
    path = Path(str(spec))
    if isinstance(spec, int) or not path.exists() or (path.is_file() and path.suffix.lower() not in VIDEO_SUFFIXES):
        raise ValueError(f"{spec}: only a frame folder or a video file has a frame count")
    if path.is_dir():
        return len(_frame_files(path))
    container, stream = _open_container(str(path), str(path), "is it a complete video file?")
    with container:
        return sum(1 for packet in container.demux(stream) if packet.size)


def list_videos(folder: Spec) -> list:
    """The videos of a folder of videos as ``[(name, path)]`` in natural order: its video files (named
    by their stem) and its sub-folders that hold frames (named as the folder). ``[]`` when ``folder``
    is not a folder or holds frames itself (then it is one video). Two videos of one name (``a.mp4``
    and ``a.avi``, or ``a.mp4`` and ``a/``) are refused: their outputs would share a folder."""
    path = Path(str(folder))
    if isinstance(folder, int) or not path.is_dir() or _frame_files(path):
        return []
    found: dict = {}
    for entry in sorted(os.scandir(path), key=lambda e: _natural_key(Path(e.name))):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and Path(entry.name).suffix.lower() in VIDEO_SUFFIXES:
            name = Path(entry.name).stem
        elif entry.is_dir() and _frame_files(Path(entry.path)):
            name = entry.name
        else:
            continue
        if name in found:
            raise ValueError(f"{path}: two videos are named {name!r} ({found[name].name}, {entry.name}); "
                             "rename one: each video's outputs go to a folder of its name")
        found[name] = Path(entry.path)
    return list(found.items())


def _frame_files(folder: Path) -> list:
    return sorted((Path(e.path) for e in os.scandir(folder) if e.is_file() and
                   Path(e.name).suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))   # writable, as every source's frames are


def _open_folder(folder: Path, start: int, every: int, reverse: bool) -> dict:
    from PIL import Image
    files = _frame_files(folder)
    if not files:
        raise SourceNotFound(f"{folder}: no frames ({' '.join(IMAGE_SUFFIXES)}) in this folder")
    if start >= len(files):
        raise ValueError(f"{folder}: start={start} but the folder has {len(files)} frames")
    positions = range(start, -1, -every) if reverse else range(start, len(files), every)

    def items() -> Iterator[_Item]:
        for i in positions:
            try:
                item = _Item(i, _read_image(files[i]))
            except Exception as err:   # one unreadable frame is skipped, never the end of the stream
                item = _Item(i, None, reason=f"{files[i].name}: {_one_line(err)}")
            yield item
    size = None
    with contextlib.suppress(Exception), Image.open(files[start]) as first:   # the size, from the header alone
        size = first.size
    return dict(items=items(), kind="folder", size=size,
                description=f"folder {folder} ({len(files)} frames{', backward' if reverse else ''})")


def _open_container(target: str, what: str, hint: str, **options):
    av, started = _video.require_av(), time.monotonic()
    try:
        container = av.open(target, **options)
    except (av.error.FFmpegError, OSError, ValueError) as err:
        waited = options.get("timeout", (None,))[0]
        reason = (f"no answer in {waited:g} s" if waited and time.monotonic() - started >= 0.9 * waited
                  else _one_line(err))
        raise SourceUnavailable(f"{what} could not be opened: {reason}; {hint}") from None
    if not container.streams.video:
        container.close()
        raise SourceUnavailable(f"{what} has no video stream; {hint}")
    return container, container.streams.video[0]


def _pyav_items(container, stream, every: int, start: int = 0) -> Iterator[_Item]:
    for index, frame, error in _video.decode_frames(container, stream):
        if index >= start and (index - start) % every == 0:
            yield _Item(*_rgb(index, frame, error))


def _stream_facts(stream) -> tuple:
    fps = float(stream.average_rate) if stream.average_rate else None
    size = (stream.width, stream.height) if stream.width and stream.height else None
    shown = stream.codec_context.name + (f" {size[0]}x{size[1]}" if size else "") + (f" {fps:g} fps" if fps else "")
    return fps, size, shown


def _open_video(path: Path, start: int, every: int, reverse: bool) -> dict:
    container, stream = _open_container(str(path), str(path), "is it a complete video file?")
    fps, size, shown = _stream_facts(stream)
    items = _pyav_items(container, stream, every, start)
    if reverse:   # the forward reader is never started: the backward one opens the file per block
        container.close()
        items = (_Item(*frame) for frame in _video.read_backward(path, start, every))
    return dict(items=items, on_close=container.close, kind="video", fps=fps, size=size,
                description=f"video {path} ({shown}" + (f", backward from frame {start})" if reverse else ")"))


def _open_camera(spec: Spec, size: Optional[tuple], fps: Optional[float], timeout_s: float, every: int) -> dict:
    device = f"/dev/video{spec}" if isinstance(spec, int) else str(spec)
    what = f"camera {spec} ({device})" if isinstance(spec, int) else f"camera {device}"
    listing = "list cameras with `v4l2-ctl --list-devices`"
    if not sys.platform.startswith("linux"):
        raise SourceUnavailable(f"{what} could not be opened: cameras are read through V4L2 (Linux); elsewhere "
                                "pipe frames in: ffmpeg -i <camera> -f rawvideo -pix_fmt rgb24 - | ... (source '-')")
    if not os.path.exists(device):
        raise SourceNotFound(f"{what} could not be opened: no such device; {listing}")
    options = {"video_size": f"{size[0]}x{size[1]}"} if size else {}
    options.update({"framerate": f"{fps:g}"} if fps else {})
    hint = f"is another program using it? may you read it (the video group)? {listing}"
    return _live_pyav(device, what, hint, "camera", every, timeout_s, format="v4l2", options=options)


def _open_url(url: str, scheme: str, timeout_s: float, every: int) -> dict:
    parts = urlsplit(url)
    shown = parts._replace(netloc=f"***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")).geturl() \
        if parts.username or parts.password else url   # never write a password into a report
    options = {"rtsp_transport": "tcp"} if scheme.startswith("rtsp") else {}
    hint = "check the address and that the server is up"
    return _live_pyav(url, f"stream {shown}", hint, "url", every, timeout_s, options=options)


def _live_pyav(target: str, what: str, hint: str, kind: str, every: int, timeout_s: float, **options) -> dict:
    container, stream = _open_container(target, what, hint, timeout=(timeout_s, max(timeout_s, 10.0)), **options)
    fps, size, facts = _stream_facts(stream)
    return dict(items=_pyav_items(container, stream, every), on_close=container.close, kind=kind, fps=fps,
                size=size, description=f"{what} ({facts})")


def _open_stdin(size: Optional[tuple], fps: Optional[float], every: int) -> dict:
    if size is None:
        raise ValueError("raw frames on stdin need their size: size=(width, height) (--stdin-size WxH)")
    if sys.stdin is None or sys.stdin.isatty():
        raise SourceUnavailable("stdin is not a pipe: send raw RGB24 frames into it, e.g. "
                                "ffmpeg -i VIDEO -f rawvideo -pix_fmt rgb24 - | ...")
    return dict(items=_raw_items(sys.stdin.buffer, size, fps, every), kind="stdin", fps=fps, size=tuple(size),
                description=f"stdin (raw rgb24 {size[0]}x{size[1]})")


def _raw_items(pipe, size: tuple, fps: Optional[float], every: int) -> Iterator[_Item]:
    width, height = size
    length, index = width * height * 3, 0
    while True:
        buffer = bytearray(length)
        view, got = memoryview(buffer), 0
        while got < length:
            read = pipe.readinto(view[got:])
            if not read:
                break
            got += read
        if got < length:
            if got:
                yield _Item(index, None, reason=f"stdin ended mid-frame ({got} of {length} bytes)")
            return
        if index % every == 0:
            image = np.frombuffer(buffer, np.uint8).reshape(height, width, 3)
            yield _Item(index, image, index / fps if fps else None)
        index += 1
