"""Video files, cameras and streams through a model: decode -> infer -> draw, the stages overlapped.

Three stages connected by bounded queues (:data:`QUEUE_SIZE` frames each): a decode thread
(``cv2.VideoCapture.read`` and the BGR->RGB conversion release the GIL), inference in the
calling thread (torch releases it inside its kernels; Ctrl-C arrives in this thread), and a
draw thread (overlay, ``cv2.VideoWriter.write``, one JSON line per frame). One thread per
stage and FIFO queues keep the frames in order. An exception in any stage stops the others
(they poll a shared flag whenever a queue is full or empty) and is re-raised to the caller;
the partial video and JSONL are then removed. Ctrl-C or ``max_frames`` ends an endless
stream cleanly: the frames already inferred are drawn, and the video and JSONL are finalised.
Both outputs are written to temp files beside their paths and renamed into place.
"""

from __future__ import annotations

import json
import math
import os
import queue
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import cv2
import numpy as np

__all__ = ["FALLBACK_FPS", "Frame", "PipelineStats", "QUEUE_SIZE", "STREAM_SCHEMES", "VIDEO_SUFFIXES",
           "VideoSink", "VideoSource", "check_video_inputs", "is_video_input", "run_video_pipeline",
           "unique_stems", "video_stem"]

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://")
FALLBACK_FPS = 30.0  # when the container says 0 (many cameras and streams)
QUEUE_SIZE = 4
_POLL_S = 0.05  # how often a thread waiting on a queue looks at the stop flags


def is_video_input(item: str) -> bool:
    """A camera index ("0"), a stream URL (rtsp://, rtmp://, http(s)://) or a file with a video suffix."""
    text = str(item)
    if text.isdigit() or text.lower().startswith(STREAM_SCHEMES):
        return True
    return Path(text).suffix.lower() in VIDEO_SUFFIXES and not Path(text).is_dir()


def video_stem(item: str) -> str:
    """The output name of a video input: the file's stem, ``camera0``, or the URL's host and path."""
    text = str(item)
    if text.isdigit():
        return f"camera{int(text)}"
    if text.lower().startswith(STREAM_SCHEMES):
        parts = urlsplit(text)
        return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{parts.hostname or ''}{parts.path}").strip("_.") or "stream"
    return Path(text).stem


def check_video_inputs(inputs: list[str], max_frames: int | None = None) -> tuple[list[str], list[str]]:
    """``(video inputs, other inputs)`` of a ``predict`` command line; a missing video file and a
    ``--max-frames`` below 1 are refused before any work."""
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1, got {max_frames}")
    videos = [str(i) for i in inputs if is_video_input(i)]
    for item in videos:
        if not (item.isdigit() or item.lower().startswith(STREAM_SCHEMES) or Path(item).is_file()):
            raise FileNotFoundError(f"video not found: {item}")
    return videos, [str(i) for i in inputs if not is_video_input(i)]


def unique_stems(inputs: list[str]) -> list[tuple[str, str]]:
    """``(input, output stem)`` pairs, ``_2``, ``_3`` ... appended where two inputs share a stem."""
    seen: dict[str, int] = {}
    out = []
    for item in inputs:
        stem = video_stem(item)
        seen[stem] = seen.get(stem, 0) + 1
        out.append((item, stem if seen[stem] == 1 else f"{stem}_{seen[stem]}"))
    return out


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its index in the stream, its time in seconds and the RGB pixels."""

    index: int
    t: float
    image: np.ndarray  # (H, W, 3) uint8 RGB


class VideoSource:
    """``cv2.VideoCapture`` of a video file, a camera index (``0`` or ``"0"``) or an rtsp/rtmp/http(s) URL.

    Raises:
        FileNotFoundError: a video file that does not exist.
        OSError: a source OpenCV cannot open (the message names it).
    """

    def __init__(self, source: str | int, *, fallback_fps: float = FALLBACK_FPS, open_timeout_s: float = 10.0) -> None:
        self.name = str(source)
        if isinstance(source, int) or self.name.isdigit():
            self.kind, target = "camera", int(self.name)
        elif self.name.lower().startswith(STREAM_SCHEMES):
            self.kind, target = "stream", self.name
        else:
            self.kind, target = "file", self.name
            if not Path(self.name).is_file():
                raise FileNotFoundError(f"video not found: {self.name}")
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(open_timeout_s * 1000)]
        self._cap = cv2.VideoCapture(target, cv2.CAP_ANY, params)
        if not self._cap.isOpened():
            self._cap.release()
            hint = {"camera": "no such camera, or it is in use", "stream": "unreachable, or not a video stream",
                    "file": "not a video OpenCV/FFmpeg can decode"}[self.kind]
            raise OSError(f"cannot open video source {self.name!r} ({hint})")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if math.isfinite(fps) and 0 < fps <= 1000 else float(fallback_fps)
        self.width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count: int | None = int(count) if self.kind == "file" and math.isfinite(count) and count > 0 \
            else None
        self._index, self._start, self._last_t = 0, None, -1.0

    def read(self) -> Frame | None:
        """The next frame (RGB), or None at the end of the stream (or a frame that cannot be decoded)."""
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            return None
        now = time.monotonic()
        self._start = now if self._start is None else self._start
        if self.kind == "file":  # the container's timestamp; index / fps where it has none
            t = self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000
            t = t if math.isfinite(t) and t > self._last_t else self._index / self.fps
        else:  # live: seconds since the first frame arrived
            t = now - self._start
        self._last_t = t
        frame = Frame(self._index, round(t, 6), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr))
        self._index += 1
        return frame

    def close(self) -> None:
        self._cap.release()

    def __enter__(self) -> "VideoSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class VideoSink:
    """``cv2.VideoWriter`` into ``path`` (mp4v for .mp4, MJPG for .avi), via a temp file renamed at :meth:`close`.

    The writer opens at the first frame (its size fixes the video's); every frame must have it.
    """

    CODECS = {".mp4": "mp4v", ".avi": "MJPG"}

    def __init__(self, path: str | os.PathLike, fps: float, codec: str | None = None) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if codec is None and suffix not in self.CODECS:
            raise ValueError(f"video output {self.path}: use a .mp4 (mp4v) or .avi (MJPG) name, or pass a codec")
        self.codec, self.fps = codec or self.CODECS[suffix], float(fps)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.tmp{self.path.suffix}")
        self._writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None  # (width, height)
        self.frames = 0

    def write(self, frame_bgr: np.ndarray) -> None:
        h, w = frame_bgr.shape[:2]
        if self._writer is None:
            self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*self.codec), self.fps, (w, h))
            if not self._writer.isOpened():
                self._writer = None
                self._tmp.unlink(missing_ok=True)
                raise OSError(f"cannot write video {self.path}: OpenCV's VideoWriter did not open "
                              f"(codec {self.codec}, {w}x{h} at {self.fps:g} fps; is the folder writable?)")
            self.size = (w, h)
        elif (w, h) != self.size:
            raise ValueError(f"video {self.path}: frame {self.frames} is {w}x{h}, the first was "
                             f"{self.size[0]}x{self.size[1]}; every frame must have one size")
        self._writer.write(np.ascontiguousarray(frame_bgr))
        self.frames += 1

    def close(self, keep: bool = True) -> Path | None:
        """Finish the file and rename it into place (``keep``), or remove it; the path, or None if none."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if not (keep and self.frames and self._tmp.exists()):
            self._tmp.unlink(missing_ok=True)
            return None
        _fsync(self._tmp)
        os.replace(self._tmp, self.path)
        return self.path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class PipelineStats:
    """What :func:`run_video_pipeline` did: frames written, wall time, and the time per frame of each stage."""

    frames: int
    seconds: float
    fps: float
    model_ms_per_frame: float  # inside infer_fn
    decode_ms_per_frame: float  # VideoCapture.read + BGR->RGB
    draw_ms_per_frame: float  # inside draw_fn
    write_ms_per_frame: float  # VideoWriter.write + the JSON line
    interrupted: bool  # stopped by Ctrl-C

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Aborted(Exception):
    """Another stage failed: stop now."""


_END = object()


class _Pipeline:
    """Flags, queues and per-stage timers shared by the three stages of one run."""

    def __init__(self, queue_size: int) -> None:
        self.frames_in: queue.Queue = queue.Queue(queue_size)
        self.frames_out: queue.Queue = queue.Queue(queue_size)
        self.abort = threading.Event()  # a stage failed: everyone stops, outputs are removed
        self.halt = threading.Event()  # Ctrl-C: stop decoding, finish what was inferred
        self.errors: list[BaseException] = []
        self.interrupted = False
        self.frames = 0  # written (drawn) so far
        self.seconds = {"decode": 0.0, "model": 0.0, "draw": 0.0, "write": 0.0}

    def fail(self, e: BaseException) -> None:
        if not isinstance(e, _Aborted):
            self.errors.append(e)
        self.abort.set()

    def put(self, q: queue.Queue, item: Any, until: threading.Event | None = None) -> bool:
        """Blocking put that gives up (False) once the run is aborted or ``until`` is set."""
        while True:
            if self.abort.is_set() or (until is not None and until.is_set()):
                return False
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue

    def get(self, q: queue.Queue) -> Any:
        """Blocking get that raises :class:`_Aborted` once the run is aborted."""
        while True:
            if self.abort.is_set():
                raise _Aborted
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                continue


def _decode(p: _Pipeline, source: VideoSource, max_frames: int | None) -> None:
    try:
        n = 0
        while max_frames is None or n < max_frames:
            tic = time.perf_counter()
            frame = source.read()
            p.seconds["decode"] += time.perf_counter() - tic
            if frame is None or not p.put(p.frames_in, frame, until=p.halt):
                break
            n += 1
        p.put(p.frames_in, _END, until=p.halt)
    except BaseException as e:  # noqa: BLE001 - re-raised by the caller
        p.fail(e)
    finally:
        source.close()


def _draw(p: _Pipeline, draw_fn: Callable, sink: VideoSink | None, jsonl_path: Path | None, bar: Any,
          name: str) -> None:
    tmp = None if jsonl_path is None else jsonl_path.with_name(f".{jsonl_path.name}.{os.getpid()}.tmp")
    f = None
    try:
        f = None if tmp is None else open(tmp, "w")
        while (item := p.get(p.frames_out)) is not _END:
            frame, result = item
            tic = time.perf_counter()
            image, record = draw_fn(frame, result)
            toc = time.perf_counter()
            if sink is not None and image is not None:
                sink.write(image)
            if f is not None:
                f.write(json.dumps({"frame": frame.index, "t": frame.t, **record}) + "\n")
            p.seconds["draw"] += toc - tic
            p.seconds["write"] += time.perf_counter() - toc
            p.frames += 1
            bar.update(1)
        if p.frames == 0 and not p.interrupted:
            raise OSError(f"no frame could be decoded from video source {name!r}")
        if sink is not None:
            sink.close(keep=True)
        if f is not None:
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.replace(tmp, jsonl_path)
    except BaseException as e:  # noqa: BLE001 - re-raised by the caller
        p.fail(e)
        if sink is not None:
            sink.close(keep=False)
        if f is not None:
            f.close()
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def run_video_pipeline(source: VideoSource | str | int, infer_fn: Callable[[Frame], Any],
                       draw_fn: Callable[[Frame, Any], tuple[np.ndarray | None, dict[str, Any]]],
                       sink: VideoSink | None, jsonl_path: str | os.PathLike | None, *,
                       max_frames: int | None = None, progress: bool = True, queue_size: int = QUEUE_SIZE,
                       desc: str = "video") -> PipelineStats:
    """Decode ``source``, run ``infer_fn`` on every frame, draw and write the results, the stages overlapped.

    Args:
        source: an open :class:`VideoSource` or what opens one (path, camera index, URL); closed at the end.
        infer_fn: ``Frame -> result``, in the calling thread.
        draw_fn: ``(Frame, result) -> (annotated BGR image or None, JSON-able record)``, in the draw thread.
        sink: where annotated frames go (None: no video); finalised at the end.
        jsonl_path: one line per frame, ``{"frame": i, "t": seconds, **record}``, in order (None: no file).
        max_frames: stop after this many frames (an endless camera; None: to the end of the stream).
        progress: a tqdm bar (frames, frames/s).

    Returns:
        :class:`PipelineStats`. Ctrl-C (KeyboardInterrupt) ends the run cleanly with ``interrupted=True``.

    Raises:
        Whatever a stage raised; the partial outputs are then removed.
    """
    from tqdm import tqdm

    if max_frames is not None and max_frames < 1:
        if not isinstance(source, (str, int, os.PathLike)):
            source.close()
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if isinstance(source, (str, int, os.PathLike)):
        source = VideoSource(source)  # else anything with VideoSource's read(), close(), name, frame_count
    jsonl = None if jsonl_path is None else Path(jsonl_path)
    if jsonl is not None:
        jsonl.parent.mkdir(parents=True, exist_ok=True)
    total = source.frame_count if max_frames is None else min(max_frames, source.frame_count or max_frames)
    p = _Pipeline(queue_size)
    tic = time.perf_counter()
    with tqdm(total=total, desc=desc, unit="frame", disable=not progress, dynamic_ncols=True) as bar:
        threads = [threading.Thread(target=_decode, args=(p, source, max_frames), name="video-decode", daemon=True),
                   threading.Thread(target=_draw, args=(p, draw_fn, sink, jsonl, bar, source.name), name="video-draw",
                                    daemon=True)]
        for t in threads:
            t.start()
        try:
            while (frame := p.get(p.frames_in)) is not _END:
                t0 = time.perf_counter()
                result = infer_fn(frame)
                p.seconds["model"] += time.perf_counter() - t0
                if not p.put(p.frames_out, (frame, result)):
                    break
        except KeyboardInterrupt:
            p.interrupted = True
        except BaseException as e:  # noqa: BLE001 - re-raised below, once the other stages have stopped
            p.fail(e)
        finally:
            _finish(p, threads)
    if p.errors:
        raise p.errors[0]
    seconds, n = time.perf_counter() - tic, p.frames
    per = 1e3 / max(n, 1)
    return PipelineStats(n, seconds, n / seconds if seconds > 0 else 0.0, p.seconds["model"] * per,
                         p.seconds["decode"] * per, p.seconds["draw"] * per, p.seconds["write"] * per, p.interrupted)


def _finish(p: _Pipeline, threads: list[threading.Thread]) -> None:
    """Stop decoding, let the draw stage write what was inferred (nothing once aborted), join both threads.

    A further Ctrl-C here is ignored: the last frames and the file renames take milliseconds.
    """
    p.halt.set()
    while True:
        try:
            p.put(p.frames_out, _END)  # no-op once aborted
            break
        except KeyboardInterrupt:
            p.interrupted = True
    for t in threads:
        while t.is_alive():
            try:
                t.join()
            except KeyboardInterrupt:
                p.interrupted = True
