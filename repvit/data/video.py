"""Videos as the video predictors read them: a folder of JPEG frames named ``00000.jpg``, ``00001.jpg``...

``sam2``'s ``init_state(video_path=...)`` sorts a folder's frames by the integer value of their
names, so a folder named any other way, or a video file, is first turned into such a folder:
frames of a folder are linked (not copied) under numbered names in their natural order, and a
video file (``.mp4``, ``.mov``, ``.mkv``, ``.avi``, ``.webm``) is decoded through PyAV (FFmpeg's
maintained Python binding, the ``video`` extra); PNG, BMP or WebP frames are re-encoded as JPEG. ``write_video`` encodes frames back into an
H.264 ``.mp4`` (MPEG-4 Part 2 where the FFmpeg build has no H.264 encoder).

For streams (``repvit.data.stream``): ``decode_frames`` numbers a file's frames as they decode,
``read_backward`` reads a file from a frame back to frame 0 a bounded block at a time, and
``LiveVideoWriter`` encodes frames as they come, leaving a playable file however it stops.

This module is a bottom layer: it imports nothing from ``repvit``.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

import numpy as np

FRAME_SUFFIXES = (".jpg", ".jpeg")
IMAGE_SUFFIXES = FRAME_SUFFIXES + (".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
DEFAULT_FPS = 24.0
VIDEO_EXTRA = "pip install 'repvit-pytorch[video]'"


@dataclass
class FrameFolder:
    """A folder of numbered JPEG frames: ``folder/00000.jpg`` ... ; ``sources[i]`` is where frame
    ``i`` came from (a file of the input folder, or ``VIDEO#i`` for a decoded video)."""

    folder: Path
    sources: list
    fps: Optional[float]
    size: tuple          # (width, height)

    def __len__(self) -> int:
        return len(self.sources)

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as an HxWx3 uint8 RGB array."""
        from PIL import Image
        with Image.open(self.folder / f"{index:05d}.jpg") as im:
            return np.asarray(im.convert("RGB"))


def require_av():
    try:
        import av
    except ImportError:
        raise ImportError(f"reading and writing video files needs PyAV: {VIDEO_EXTRA}") from None
    return av


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _is_numbered(frames: list) -> bool:
    return all(p.stem.isdigit() for p in frames) and [int(p.stem) for p in frames] == list(range(len(frames))) \
        and all(p.suffix == ".jpg" for p in frames)


def open_frames(source: Union[str, os.PathLike], work_dir: Union[str, os.PathLike], *,
                max_frames: Optional[int] = None) -> FrameFolder:
    """``source`` (a folder of JPEG frames or a video file) as a ``FrameFolder``; ``work_dir`` receives
    the numbered links or decoded frames when the source is not already in that layout. With
    ``max_frames``, only the first that many frames."""
    from PIL import Image
    source = Path(source)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be 1 or more, got {max_frames}")
    if source.is_dir():
        frames = sorted((p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
        if not frames:
            raise FileNotFoundError(f"{source}: no frames ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        with Image.open(frames[0]) as im:
            size = im.size
        if _is_numbered(frames) and (max_frames is None or max_frames >= len(frames)):
            return FrameFolder(source, [str(p) for p in frames], None, size)
        frames = frames[:max_frames] if max_frames else frames   # a shorter folder of links, never the whole one
        work = Path(work_dir)
        work.mkdir(parents=True, exist_ok=True)
        for index, path in enumerate(frames):
            target = work / f"{index:05d}.jpg"
            if target.is_symlink() or target.exists():
                target.unlink()
            if path.suffix.lower() in FRAME_SUFFIXES:
                target.symlink_to(path.resolve())
            else:
                with Image.open(path) as im:
                    im.convert("RGB").save(target, quality=95)
        return FrameFolder(work, [str(p) for p in frames], None, size)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such video file or frame folder")
    if source.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"{source}: not a frame folder or a video file ({', '.join(VIDEO_SUFFIXES)})")
    return _decode(source, Path(work_dir), max_frames)


def _decode(path: Path, work: Path, max_frames: Optional[int]) -> FrameFolder:
    av = require_av()
    work.mkdir(parents=True, exist_ok=True)
    sources, size, fps = [], None, None
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate) if stream.average_rate else None
            for frame in container.decode(stream):
                image = frame.to_image()   # RGB, display orientation as decoded
                size = image.size
                image.save(work / f"{len(sources):05d}.jpg", quality=95)
                sources.append(f"{path}#{len(sources)}")
                if max_frames and len(sources) >= max_frames:
                    break
    except (av.error.FFmpegError, IndexError) as err:
        raise ValueError(f"{path}: cannot decode a video stream ({err})") from None
    if not sources:
        raise ValueError(f"{path}: the video has no frames")
    return FrameFolder(work, sources, fps, size)


def write_video(frames: Iterable[np.ndarray], path: Union[str, os.PathLike], *, fps: float = DEFAULT_FPS) -> Path:
    """Encode HxWx3 uint8 RGB frames into ``path`` (an ``.mp4``); odd sizes are padded by one pixel
    (H.264 in 4:2:0 needs even sides). Returns the path."""
    av = require_av()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    rate = max(1, round(fps))
    with av.open(str(path), mode="w") as container:
        stream = None
        for image in frames:
            image = np.ascontiguousarray(image)
            height, width = image.shape[:2]
            if height % 2 or width % 2:
                image = np.pad(image, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
            if stream is None:
                stream = container.add_stream(codec, rate=rate)
                stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "yuv420p"
                if codec == "libx264":
                    stream.options = {"crf": "20", "preset": "veryfast"}
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        if stream is None:
            raise ValueError("write_video: no frames to write")
        for packet in stream.encode():
            container.mux(packet)
    return path


MAX_BAD_PACKETS = 50   # packets in a row that fail to decode before a file counts as broken


def _one_line(err: BaseException) -> str:
    """The error in one short line; an ``OSError``'s reason alone (FFmpeg's names the URL, password too)."""
    text = " ".join(str(getattr(err, "strerror", None) or err).split()) or type(err).__name__
    return text if len(text) < 300 else text[:297] + "..."


def decode_frames(container, stream) -> Iterator[tuple]:
    """``(index, av.VideoFrame or None, error)`` for each frame of ``stream`` in decoding order. A
    packet that fails to decode is reported (frame None, a one-line error) and takes one number
    (a video packet is one frame), so the numbering is the same on every pass over a file."""
    av = require_av()
    index, bad = 0, 0
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.FFmpegError as err:
            bad += 1
            if bad > MAX_BAD_PACKETS:
                raise RuntimeError(f"{bad} packets in a row did not decode ({_one_line(err)})") from None
            if packet.size:
                yield index, None, f"decode error: {_one_line(err)}"
                index += 1
            continue
        bad = 0
        for frame in frames:
            yield index, frame, ""
            index += 1


def _rgb(index: int, frame, error: str) -> tuple:
    return (index, None, None, error) if frame is None else (index, frame.to_ndarray(format="rgb24"), frame.time, "")


def read_backward(path: Union[str, os.PathLike], start: int, every: int = 1, *,
                  max_bytes: int = 64 << 20) -> Iterator[tuple]:
    """Frames ``start, start - every, ...`` down to 0 of a video file as ``(index, HxWx3 uint8 RGB or
    None, seconds, error)``, numbered as ``decode_frames`` numbers them. One decoding pass first
    records every frame's timestamp (and checks ``start``); then each block of frames (at most
    ``max_bytes`` of them) is decoded from the keyframe before it, found by a seek, or from the
    file's start where the timestamps cannot place it. Nothing else is held."""
    av = require_av()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        size = stream.width * stream.height * 3 or 1
        pts = [frame.pts if frame is not None else None for _, frame, _ in decode_frames(container, stream)]
    if not 0 <= start < len(pts):
        raise ValueError(f"{path}: frame {start} asked for, the video has {len(pts)} frames")
    wanted, chunk = list(range(start, -1, -every)), max(1, max_bytes // size)

    def frames() -> Iterator[tuple]:
        for k in range(0, len(wanted), chunk):
            block = _read_block(Path(path), wanted[k:k + chunk], pts)
            yield from (block[i] for i in wanted[k:k + chunk])
    return frames()


def _read_block(path: Path, block: list, pts: list) -> dict:
    av = require_av()
    low, high, found = min(block), max(block), {}
    if all(pts[i] is not None for i in block):
        by_pts = {pts[i]: i for i in block}
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                container.seek(pts[low], stream=stream, backward=True)   # to the keyframe at or before it
                for frame in container.decode(stream):
                    if frame.pts in by_pts:
                        found[by_pts[frame.pts]] = _rgb(by_pts[frame.pts], frame, "")
                    if frame.pts is not None and frame.pts >= pts[high]:
                        break
        except av.error.FFmpegError:
            found = {}
    if len(found) < len(block):   # timestamps missing or repeated, or a seek that missed: decode from the start
        found, wanted = {}, set(block)
        with av.open(str(path)) as container:
            for index, frame, error in decode_frames(container, container.streams.video[0]):
                if index in wanted:
                    found[index] = _rgb(index, frame, error)
                if index >= high:
                    break
    return found


class LiveVideoWriter:
    """Encodes frames into ``path`` as they are written: H.264 (``libx264``; MPEG-4 Part 2 where FFmpeg
    has no H.264 encoder), yuv420p, odd sides padded by one pixel, later frames of another size
    resized to the first's. An ``.mp4``/``.mov`` is fragmented at each keyframe (every
    ``keyframe_s``), so even a killed process leaves a file playable up to its last keyframe;
    ``close()`` (idempotent; called from a signal handler during ``write`` it waits for that frame)
    flushes the rest. Without PyAV, frames go to PNGs in the folder ``path`` without its suffix,
    with one note on stderr. ``frames``: frames in the file so far. One thread writes.
    """

    def __init__(self, path: Union[str, "os.PathLike[str]"], fps: float = DEFAULT_FPS, *,
                 keyframe_s: float = 2.0, fragmented: bool = True):
        self.path, self.fps, self.frames = Path(path), float(fps), 0
        self._rate = Fraction(self.fps).limit_denominator(1001)
        self._keyint, self._fragmented = max(1, round(keyframe_s * self.fps)), fragmented
        self._container = self._stream = self._shape = self._origin = None
        self._pts, self._writing, self._close_requested, self.closed = -1, False, False, False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._av = require_av()
        except ImportError as err:
            self._av, self.path = None, self.path.with_suffix("")
            self.path.mkdir(parents=True, exist_ok=True)
            print(f"note: {err}; writing the overlay as PNG frames in {self.path}", file=sys.stderr)

    def write(self, image: np.ndarray, timestamp_s: Optional[float] = None) -> None:
        """Encode one HxWx3 uint8 RGB frame; ``timestamp_s`` (a live source's) places it in time,
        else frames follow each other at ``fps``."""
        if self.closed or self._close_requested:
            raise ValueError(f"{self.path}: the writer is closed")
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 uint8 RGB frame, got {image.dtype} {image.shape}")
        self._writing = True
        try:
            if self._av is None:
                from PIL import Image
                Image.fromarray(image).save(self.path / f"{self.frames:05d}.png")
                self.frames += 1
            else:
                self._encode(image, timestamp_s)
        finally:
            self._writing = False
            if self._close_requested:
                self.close()

    def _encode(self, image: np.ndarray, timestamp_s: Optional[float]) -> None:
        av = self._av
        if self._shape is None:
            self._open(image.shape[:2])
        if image.shape[:2] != self._shape:
            from PIL import Image
            image = np.asarray(Image.fromarray(image).resize(self._shape[::-1], Image.BILINEAR))
        height, width = self._shape
        if height % 2 or width % 2:
            image = np.pad(image, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        if timestamp_s is not None:
            self._origin = timestamp_s if self._origin is None else self._origin
            self._pts = max(self._pts + 1, round((timestamp_s - self._origin) * self._rate))
        else:
            self._pts += 1
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts, frame.time_base = self._pts, 1 / self._rate
        self._mux(self._stream.encode(frame))

    def _open(self, shape: tuple) -> None:
        av = self._av
        fragment = self._fragmented and self.path.suffix.lower() in (".mp4", ".mov", ".m4v")
        options = {"flush_packets": "1"}   # on disk as it comes, not in a buffer a killed process loses
        if fragment:
            options["movflags"] = "frag_keyframe+empty_moov+default_base_moof"
        self._container = av.open(str(self.path), mode="w", container_options=options)
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self._stream = self._container.add_stream(codec, rate=self._rate)
        self._stream.width, self._stream.height = shape[1] + shape[1] % 2, shape[0] + shape[0] % 2
        self._stream.pix_fmt, self._stream.codec_context.gop_size = "yuv420p", self._keyint
        if codec == "libx264":   # zerolatency: a packet per frame written, none held in a lookahead
            self._stream.options = {"crf": "20", "preset": "veryfast", "tune": "zerolatency"}
        self._shape = shape

    def _mux(self, packets) -> None:
        for packet in packets:
            self._container.mux(packet)
            self.frames += 1

    def close(self) -> Path:
        """Flush and finish the file (or folder); returns its path. No frames written: no file."""
        if self._writing:   # inside write(), from a signal handler: write() closes when the frame is done
            self._close_requested = True
            return self.path
        self.closed = True
        if self._container is not None:
            try:
                self._mux(self._stream.encode(None))   # what the encoder still holds
            finally:
                container, self._container = self._container, None
                container.close()
        return self.path

    def __enter__(self) -> "LiveVideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
