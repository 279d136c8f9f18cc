"""AV1 video encode/decode with PyAV (bundled FFmpeg: libsvtav1 to encode, libdav1d to decode).

Frames are addressed by presentation time: frame k of a segment starting at `from_ts` has time
`from_ts + k / fps` (lerobot's convention, also for v3.0 files holding many episodes back to back).
Random access seeks to the keyframe at or before the wanted time and decodes forward, so it yields the
same pixels as decoding the file from the start (AV1 key frames reset every reference).
"""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from geo3d.core.errors import DataError

ENCODERS = ("libsvtav1", "libaom-av1")


def pick_encoder() -> str:
    """libsvtav1 (what lerobot and the LIBERO datasets use), else libaom-av1."""
    for name in ENCODERS:
        if name in av.codecs_available:
            return name
    raise DataError(f"this PyAV/FFmpeg build has no AV1 encoder (tried {ENCODERS}); "
                    "install PyAV wheels from PyPI (`pip install av`), which bundle libsvtav1")


def encode_av1(path: Path, segments: list[np.ndarray], fps: int, crf: int = 30, gop: int = 2,
               preset: int = 8) -> list[tuple[float, float]]:
    """Encode uint8 [L,H,W,3] segments back to back into one mp4; returns each segment's (from, to) time.

    gop=2 and crf=30 are lerobot's encoding defaults (cheap seeks for random access).
    """
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints a banner per encoder otherwise
    codec = pick_encoder()
    h, w = segments[0].shape[1:3]
    if h % 2 or w % 2:
        raise DataError(f"yuv420p video needs even height and width, got {h}x{w}")
    opts = {"g": str(gop), "crf": str(crf)}
    opts.update({"preset": str(preset)} if codec == "libsvtav1" else {"cpu-used": "8", "row-mt": "1"})
    spans, pts = [], 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.options = opts
        for seg in segments:
            spans.append((pts / fps, (pts + len(seg)) / fps))
            for img in seg:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                frame.pts, frame.time_base = pts, Fraction(1, fps)
                pts += 1
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return spans


class VideoFile:
    """One open mp4 with a forward-decoding cursor, so in-order reads never seek twice.

    Opened lazily (picklable until first use, safe to create before DataLoader workers fork).
    threads: decoder threads; 1 keeps the process free of decoder threads (a process that forks
    DataLoader workers while libdav1d worker threads exist can deadlock the children), 0 = automatic
    (faster for one long in-order decode that is closed right after).
    """

    def __init__(self, path: Path, threads: int = 1):
        self.path = Path(path)
        self.threads = threads
        self._container = None
        self._stream = None
        self._frames: Iterator | None = None
        self._last_time: float | None = None  # time of the last frame handed out by the cursor

    def _open(self) -> None:
        try:
            self._container = av.open(str(self.path))
        except (OSError, av.error.FFmpegError) as e:  # type: ignore[attr-defined]
            raise DataError(f"cannot open video {self.path}: {ffmpeg_reason(e)} (a truncated or damaged file); "
                            f"re-download or re-create the dataset") from None
        if not self._container.streams.video:
            raise DataError(f"video {self.path} holds no video stream; re-download or re-create the dataset")
        self._stream = self._container.streams.video[0]
        self._stream.codec_context.thread_count = self.threads
        if self.threads != 1:
            self._stream.thread_type = "AUTO"

    def rate(self) -> float | None:
        """Frames per second per the container header (None when it does not say)."""
        if self._container is None:
            self._open()
        rate = self._stream.average_rate or self._stream.guessed_rate
        return float(rate) if rate else None

    def num_frames(self) -> int:
        """Frames in the file per the container header (0 when the header does not say)."""
        if self._container is None:
            self._open()
        return int(self._stream.frames or 0)

    def close(self) -> None:
        """Close the file; dropping the stream frees the decoder (and joins its threads)."""
        if self._container is not None:
            self._container.close()
        self._container = self._stream = self._frames = None
        self._last_time = None

    def _seek(self, t: float) -> None:
        """Position the cursor at the keyframe at or before time t."""
        if self._container is None:
            self._open()
        stream = self._stream
        offset = int(t / float(stream.time_base)) if t > 0 else 0
        self._container.seek(offset, stream=stream, backward=True, any_frame=False)
        self._frames = self._container.decode(stream)
        self._last_time = None

    def read(self, from_ts: float, fps: int, start: int, count: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (k, rgb uint8 [H,W,3]) for frames k = start .. start+count-1 of the segment at from_ts."""
        want_t = from_ts + start / fps
        half = 0.5 / fps
        fallbacks: list[float] = []
        if self._frames is None or self._last_time is None or self._last_time >= want_t - half \
                or want_t - self._last_time > 4.0:  # far ahead: seeking beats decoding through
            self._seek(want_t)
            fallbacks = [t for t in (want_t - 2.0, 0.0) if t < want_t]  # if the seek lands past the frame
        k_end = start + count
        while True:
            first, overshot = True, False
            for frame in self._decoded():
                t = float(frame.pts * frame.time_base)
                self._last_time = t
                k = round((t - from_ts) * fps)
                if first and k > start and fallbacks:
                    overshot = True
                    break
                first = False
                if k < start:
                    continue
                if k >= k_end:
                    self._frames = None  # the cursor went past; the next read re-seeks
                    return
                yield k, frame.to_ndarray(format="rgb24")
                if k == k_end - 1:
                    return
            if not overshot:
                self._frames = None
                return
            self._seek(max(fallbacks.pop(0), 0.0))


    def _decoded(self) -> Iterator:
        """The cursor's frames; a decode error (a file cut short mid-stream) is a DataError without FFmpeg codes."""
        frames = self._frames  # not `yield from`: closing this wrapper must not close the shared cursor
        while True:
            try:
                frame = next(frames)  # type: ignore[call-overload]
            except StopIteration:
                return
            except (OSError, av.error.FFmpegError) as e:  # type: ignore[attr-defined]
                self._frames = None
                raise DataError(f"cannot decode video {self.path}: {ffmpeg_reason(e)} (a truncated or damaged "
                                f"file); re-download or re-create the dataset") from None
            yield frame


def ffmpeg_reason(e: BaseException) -> str:
    """FFmpeg's words for an error, without its raw code (`[Errno 1094995529]`) and the repeated path."""
    reason = getattr(e, "strerror", None) or str(e)
    return reason[:1].lower() + reason[1:]


_LIVE_CACHES: "weakref.WeakSet[VideoCache]" = weakref.WeakSet()


def _close_before_fork() -> None:
    """A forked child (DataLoader worker) must not inherit open decoders: their worker threads do not
    exist in the child, so using or even freeing them there deadlocks. Close them in the parent first."""
    for cache in list(_LIVE_CACHES):
        cache.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_close_before_fork)


class VideoCache:
    """At most `capacity` open VideoFile objects (LRU), so random access never reopens per sample."""

    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self._files: OrderedDict[Path, VideoFile] = OrderedDict()
        _LIVE_CACHES.add(self)

    def get(self, path: Path) -> VideoFile:
        vf = self._files.pop(path, None) or VideoFile(path)
        self._files[path] = vf
        while len(self._files) > self.capacity:
            _, old = self._files.popitem(last=False)
            old.close()
        return vf

    def close(self) -> None:
        for vf in self._files.values():
            vf.close()
        self._files.clear()

    def __getstate__(self) -> dict:
        return {"capacity": self.capacity}  # open containers never cross a pickle/fork boundary

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["capacity"])
