"""Robust image reading and DataLoader worker set-up shared by detection and segmentation.

Images are decoded with OpenCV (``IMREAD_COLOR | IMREAD_IGNORE_ORIENTATION``) and
returned as 8-bit RGB:

* grayscale is replicated to three channels, the alpha channel of RGBA/LA is
  dropped (not composited), 16-bit files are scaled to 8 bit (``v >> 8``) and
  CMYK JPEGs are converted to RGB by libjpeg;
* EXIF orientation is **ignored**: COCO (and Cityscapes) annotations are in the
  stored pixel orientation, so rotating the pixels would misalign every box;
* missing, zero-byte, truncated or undecodable files raise errors naming the path.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

__all__ = ["read_image_rgb", "ImageReadError", "fsync_dir", "materialize_once", "replace_atomically",
           "write_image", "write_text_atomic", "worker_init_fn"]

# OpenCV >= 4.10 decodes straight to RGB (one pass less than BGR + cvtColor).
_RGB_FLAG = getattr(cv2, "IMREAD_COLOR_RGB", None)
_FLAGS = (cv2.IMREAD_COLOR if _RGB_FLAG is None else _RGB_FLAG) | cv2.IMREAD_IGNORE_ORIENTATION
_JPEG_SOI, _JPEG_SOS, _JPEG_EOI = b"\xff\xd8", b"\xff\xda", b"\xff\xd9"


class ImageReadError(ValueError):
    """An image file exists but cannot be decoded (empty, truncated or corrupt)."""


def _jpeg_is_complete(buf: np.ndarray) -> bool:
    """True when a JPEG has an end-of-image marker after its last scan.

    Entropy-coded data never contains ``FF D9`` (``FF`` bytes are stuffed), so a
    file cut inside its last scan has no EOI after the last SOS marker.  Older
    OpenCV builds decode such files to a grey-padded image instead of failing.
    """
    data = buf.tobytes()
    if data.endswith(_JPEG_EOI):  # the usual case: EOI last, after every scan; no need to find the last one
        return data.find(_JPEG_SOS) >= 0
    last_scan = data.rfind(_JPEG_SOS)
    return last_scan >= 0 and data.find(_JPEG_EOI, last_scan) >= 0


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an ``(H, W, 3)`` ``uint8`` RGB array in stored orientation.

    Args:
        path: image file (any format OpenCV decodes: JPEG, PNG, BMP, TIFF, WebP...).

    Raises:
        FileNotFoundError: the file does not exist.
        ImageReadError: the file is empty, truncated or not a decodable image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    # np.fromfile + imdecode: one read, works with non-ASCII paths, lets us inspect bytes.
    buf = np.fromfile(path, dtype=np.uint8)
    if buf.size == 0:
        raise ImageReadError(f"image file is empty (0 bytes): {path}")
    if buf[:2].tobytes() == _JPEG_SOI and not _jpeg_is_complete(buf):
        raise ImageReadError(f"JPEG file is truncated (no end-of-image marker after the last scan): {path}")
    try:
        img = cv2.imdecode(buf, _FLAGS)
    except cv2.error as e:  # e.g. a header beyond CV_IO_MAX_IMAGE_PIXELS (decompression bomb)
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ImageReadError(f"cannot decode image {path}: {msg}") from e
    if img is None:
        raise ImageReadError(f"cannot decode image (corrupt, truncated or unsupported format): {path}")
    if img.dtype != np.uint8:  # IMREAD_COLOR already yields 8 bit; keep the contract explicit
        img = cv2.convertScaleAbs(img, alpha=255.0 / np.iinfo(img.dtype).max)
    return img if _RGB_FLAG is not None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def worker_init_fn(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one OpenCV thread per worker process.

    Each worker already runs in parallel; OpenCV's own thread pool inside every
    worker would oversubscribe the cores (and can deadlock after ``fork``).
    Random streams need no re-seeding here: torch seeds each worker's generator and
    the transforms of this package draw their seeds from it.
    """
    del worker_id
    cv2.setNumThreads(0)


def materialize_once(root: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Create the folder ``root`` with ``write(tmp_dir)`` exactly once, atomically.

    Each caller writes into its own temporary sibling, then renames it to
    ``root``; when several processes race (DDP ranks), one rename wins and the
    others discard their copy, so nobody ever reads a half-written dataset.
    """
    root = Path(root)
    if root.exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        write(tmp)
        os.rename(tmp, root)
    except OSError:
        if not root.exists():
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_failure(path: Path, e: BaseException) -> OSError:
    """An OSError that names the file, the cause and the free space, and says nothing was replaced."""
    reason = getattr(e, "strerror", None) or str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    try:
        free = f"; {shutil.disk_usage(path.parent).free / 1e6:.0f} MB free on its disk"
    except OSError:
        free = ""
    err = OSError(f"could not write {path}: {reason}{free}. Nothing was replaced: the previous file, if any, "
                  "is intact")
    err.errno = getattr(e, "errno", None) or errno.EIO
    return err


def replace_atomically(path: str | os.PathLike, write: Callable[[Any], object], binary: bool = False) -> Path:
    """``write(file)`` into a temp file beside ``path``, fsync, chmod 0644, rename over ``path``, fsync the folder.

    A run killed at any instant leaves the old file or the new one, never a torn one. A failed
    write (disk full, I/O error; torch's ``PytorchStreamWriter failed writing file``) removes the
    temp file and raises an OSError naming ``path`` and the cause.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) or (isinstance(e, RuntimeError) and "writ" in str(e).lower()):
            raise _write_failure(path, e) from e
        raise
    fsync_dir(path.parent)
    return path


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write a text file atomically (:func:`replace_atomically`)."""
    return replace_atomically(path, lambda f: f.write(text))


def write_image(path: str | os.PathLike, image_bgr: np.ndarray, params: list[int] | None = None) -> Path:
    """``cv2.imwrite`` that raises (naming the file and the free space) where OpenCV only returns False."""
    path = Path(path)
    if not cv2.imwrite(str(path), image_bgr, params or []):
        raise _write_failure(path, OSError(errno.EIO, "OpenCV could not write the image (disk full? "
                                                      "unknown extension?)"))
    return path
