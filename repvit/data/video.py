"""Videos as the video predictors read them: a folder of JPEG frames named ``00000.jpg``, ``00001.jpg``...

``sam2``'s ``init_state(video_path=...)`` sorts a folder's frames by the integer value of their
names, so a folder named any other way, or a video file, is first turned into such a folder:
frames of a folder are linked (not copied) under numbered names in their natural order, and a
video file (``.mp4``, ``.mov``, ``.mkv``, ``.avi``, ``.webm``) is decoded through PyAV (FFmpeg's
maintained Python binding, the ``video`` extra); PNG, BMP or WebP frames are re-encoded as JPEG. ``write_video`` encodes frames back into an
H.264 ``.mp4`` (MPEG-4 Part 2 where the FFmpeg build has no H.264 encoder).

This module is a bottom layer: it imports nothing from ``repvit``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

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
