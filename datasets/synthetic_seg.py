"""Synthetic street scenes in the official Cityscapes layout (a small, learnable stand-in dataset).

Each frame is composed like a Cityscapes view from a car: sky above a horizon, a row of building
facades (windows, walls, fences, trees), sidewalks, a perspective road with lane markings, and
cars, persons, riders on bicycles, poles with traffic signs or lights, all scaled by their
distance to the horizon. Labels are real Cityscapes label ids (``cityscapes_labels.LABELS``),
including ignored ones (unlabeled 0, ego vehicle 1, static 4, parking 9), so the files go through
the same labelIds -> trainIds path as the real dataset. Colours overlap between classes (grey
road / sidewalk / building / overcast sky) and every surface is textured and noisy, so a model
must use shape and context, not a colour lookup.

Every frame draws from its own ``SeedSequence((seed, split, index))``: the output is a pure
function of the arguments, and frame ``i`` does not depend on how many frames are written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from .cityscapes_labels import LABELS, label_ids_to_train_ids

__all__ = ["make_synthetic_cityscapes", "render_scene", "SYNTHETIC_CITIES"]

_ID = {lab.name: lab.id for lab in LABELS}
#: Fake cities per split (real Cityscapes also keeps val cities out of train).
SYNTHETIC_CITIES: dict[str, tuple[str, ...]] = {"train": ("synthburg", "pixelstadt"), "val": ("testheim",)}
_MANIFEST = "synthetic_seg.json"
_VERSION = 1

# Per-label texture amplitude (fine noise, grey levels): vegetation is busy, sky is smooth.
_TEXTURE = np.full(256, 6.0, dtype=np.float32)
for _name, _amp in {"sky": 2.0, "road": 9.0, "sidewalk": 7.0, "building": 7.0, "vegetation": 30.0,
                    "terrain": 18.0, "car": 4.0, "wall": 10.0}.items():
    _TEXTURE[_ID[_name]] = _amp


class _Canvas:
    """Paints an RGB float image and its labelIds map with the same cv2 primitives."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.img = np.zeros((h, w, 3), np.float32)
        self.lab = np.full((h, w), _ID["unlabeled"], np.uint8)

    def poly(self, pts: np.ndarray | list, label: str | None, color) -> None:
        pts = [np.round(np.asarray(pts)).astype(np.int32)]
        cv2.fillPoly(self.img, pts, tuple(float(c) for c in color))
        if label is not None:  # None: paint the image only (windows, markings keep the label)
            cv2.fillPoly(self.lab, pts, _ID[label])

    def rect(self, x0: float, y0: float, x1: float, y1: float, label: str | None, color) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], label, color)

    def ellipse(self, cx: float, cy: float, ax: float, ay: float, label: str | None, color) -> None:
        pts = cv2.ellipse2Poly((int(cx), int(cy)), (max(int(ax), 1), max(int(ay), 1)), 0, 0, 360, 10)
        self.poly(pts, label, color)

    def line(self, p0, p1, thickness: float, label: str | None, color) -> None:
        (x0, y0), (x1, y1) = p0, p1
        t = max(int(round(thickness)), 1)
        cv2.line(self.img, (int(x0), int(y0)), (int(x1), int(y1)), tuple(float(c) for c in color), t)
        if label is not None:
            cv2.line(self.lab, (int(x0), int(y0)), (int(x1), int(y1)), _ID[label], t)


def _grey(rng: np.random.Generator, lo: float, hi: float, tint: float = 12.0) -> np.ndarray:
    return rng.uniform(lo, hi) + rng.uniform(-tint, tint, 3)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    small = rng.standard_normal((max(h // cell, 2), max(w // cell, 2))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _background(c: _Canvas, rng: np.random.Generator, horizon: int, base: int, vx: float,
                spread: tuple[float, float]) -> None:
    """Sky, facades (with windows), walls/fences/hedges, sidewalks, road and lane markings."""
    h, w = c.h, c.w
    overcast = rng.random() < 0.3
    top = _grey(rng, 150, 200, 6) if overcast else np.array([rng.uniform(60, 110), rng.uniform(110, 160), 215])
    bottom = top + (rng.uniform(10, 40) if overcast else np.array([70.0, 50.0, 20.0]))
    ramp = np.linspace(0, 1, base, dtype=np.float32)[:, None, None]  # down to the ground line (gaps)
    c.img[:base] = top * (1 - ramp) + bottom * ramp
    c.lab[:base] = _ID["sky"]
    x = -rng.uniform(0, 0.1) * w  # facades left to right, with gaps of sky or trees
    while x < w:
        bw = rng.uniform(0.08, 0.28) * w
        if rng.random() < 0.15:  # a gap: tree or open sky
            if rng.random() < 0.6:
                _tree(c, rng, x + bw / 2, base, rng.uniform(0.6, 1.0) * (base - 0.05 * h))
        else:
            y0 = rng.uniform(0.02, 0.8) * horizon
            col = _grey(rng, 80, 200, 25)
            c.rect(x, y0, x + bw, base, "building", col)
            win = col * rng.uniform(0.35, 0.6) + np.array([0, 5, 20])
            step_x, step_y = rng.uniform(10, 22) * w / 512, rng.uniform(12, 24) * h / 256
            for wy in np.arange(y0 + step_y * 0.5, base - step_y, step_y):
                for wx in np.arange(x + step_x * 0.4, x + bw - step_x * 0.6, step_x):
                    c.rect(wx, wy, wx + step_x * 0.55, wy + step_y * 0.55, None, win)
        x += bw
    for _ in range(rng.integers(0, 3)):  # low walls / fences / hedges in front of the facades
        x0, ww = rng.uniform(0, w), rng.uniform(0.1, 0.3) * w
        hh = rng.uniform(0.04, 0.12) * h
        kind = str(rng.choice(["wall", "fence", "vegetation"]))
        col = np.array([60, 100, 40]) * rng.uniform(0.7, 1.2) if kind == "vegetation" else _grey(rng, 90, 180, 10)
        c.rect(x0, base - hh, x0 + ww, base + 1, kind, col)
        if kind == "fence":  # a lattice: the whole fence area is labelled fence, as in gtFine
            fc = _grey(rng, 60, 140, 20)
            for fx in np.arange(x0, x0 + ww, 6 * w / 512):
                c.line((fx, base - hh), (fx, base), 1, None, fc)
            c.line((x0, base - hh), (x0 + ww, base - hh), 2, None, fc)
    c.rect(0, base, w, h, "sidewalk", _grey(rng, 120, 190, 15))
    tile = c.img[h - 1, 0] * 0.8
    for ty in np.arange(base, h, rng.uniform(6, 12) * h / 256):
        c.line((0, ty), (w, ty), 1, None, tile)
    spread_l, spread_r = spread
    road = [(vx - 0.03 * w, horizon), (vx + 0.03 * w, horizon), (spread_r, h), (spread_l, h)]
    if rng.random() < 0.4:  # grass verges: terrain strips along both road edges
        grow = np.array([[-0.01 * w, 0], [0.01 * w, 0], [0.12 * w, 0], [-0.12 * w, 0]])
        c.poly(np.array(road) + grow, "terrain", np.array([110, 140, 70]) * rng.uniform(0.8, 1.1))
    c.poly(road, "road", _grey(rng, 60, 120, 6))
    if rng.random() < 0.3:  # a parking strip (ignored in evaluation) on the right road edge
        c.poly([(vx + 0.03 * w, horizon), (vx + 0.045 * w, horizon), (spread_r, h), (spread_r - 0.12 * w, h)],
               "parking", _grey(rng, 90, 140, 10))
    mark = _grey(rng, 200, 240, 5)
    for t0 in np.arange(rng.uniform(0, 0.1), 1, 0.12):  # dashed centre line, perspective spacing
        t1 = t0 + 0.05
        x_at = lambda t: vx + t * ((spread_l + spread_r) / 2 - vx)  # noqa: E731
        p = [(x_at(t0**2) - 1 - 4 * t0**2, horizon + t0**2 * (h - horizon)),
             (x_at(t0**2) + 1 + 4 * t0**2, horizon + t0**2 * (h - horizon)),
             (x_at(t1**2) + 1 + 4 * t1**2, horizon + t1**2 * (h - horizon)),
             (x_at(t1**2) - 1 - 4 * t1**2, horizon + t1**2 * (h - horizon))]
        c.poly(p, None, mark)


def _tree(c: _Canvas, rng: np.random.Generator, x: float, foot: float, height: float) -> None:
    green = np.array([rng.uniform(40, 90), rng.uniform(80, 140), rng.uniform(20, 60)])
    c.rect(x - height * 0.04, foot - height * 0.5, x + height * 0.04, foot, "vegetation", (70, 55, 40))
    for _ in range(rng.integers(2, 5)):
        c.ellipse(x + rng.normal(0, height * 0.12), foot - height * rng.uniform(0.55, 0.8),
                  height * rng.uniform(0.18, 0.3), height * rng.uniform(0.15, 0.25), "vegetation",
                  green * rng.uniform(0.8, 1.2))


def _car(c: _Canvas, rng: np.random.Generator, x: float, foot: float, s: float) -> None:
    w_ = s * c.w * 0.42
    h_ = w_ * rng.uniform(0.42, 0.55)
    body = rng.uniform(20, 230, 3)
    c.rect(x - w_ / 2, foot - h_ * 0.55, x + w_ / 2, foot - h_ * 0.1, "car", body)
    c.poly([(x - w_ * 0.38, foot - h_ * 0.55), (x - w_ * 0.28, foot - h_),
            (x + w_ * 0.28, foot - h_), (x + w_ * 0.38, foot - h_ * 0.55)], "car", body * 0.9)
    c.poly([(x - w_ * 0.32, foot - h_ * 0.58), (x - w_ * 0.25, foot - h_ * 0.93),
            (x + w_ * 0.25, foot - h_ * 0.93), (x + w_ * 0.32, foot - h_ * 0.58)], None, (40, 50, 65))
    for wx in (x - w_ * 0.32, x + w_ * 0.32):
        c.ellipse(wx, foot - h_ * 0.12, w_ * 0.1, h_ * 0.13, "car", (20, 20, 22))
    c.rect(x - w_ * 0.1, foot - h_ * 0.3, x + w_ * 0.1, foot - h_ * 0.22, None, (220, 220, 215))  # plate


def _person(c: _Canvas, rng: np.random.Generator, x: float, foot: float, s: float, label: str = "person") -> None:
    hh = s * c.h * rng.uniform(0.4, 0.55)
    shirt, pants = rng.uniform(20, 240, 3), _grey(rng, 20, 90, 15)
    c.rect(x - hh * 0.07, foot - hh * 0.48, x - hh * 0.01, foot, label, pants)
    c.rect(x + hh * 0.01, foot - hh * 0.48, x + hh * 0.07, foot, label, pants)
    c.rect(x - hh * 0.1, foot - hh * 0.85, x + hh * 0.1, foot - hh * 0.46, label, shirt)
    c.ellipse(x, foot - hh * 0.92, hh * 0.065, hh * 0.08, label, np.array([200, 160, 130]) * rng.uniform(0.5, 1.1))


def _rider(c: _Canvas, rng: np.random.Generator, x: float, foot: float, s: float) -> None:
    r = s * c.h * 0.09
    frame = rng.uniform(20, 200, 3)
    for wx in (x - 1.4 * r, x + 1.4 * r):
        cv2.circle(c.img, (int(wx), int(foot - r)), max(int(r), 1), (30, 30, 30), max(int(r * 0.25), 1))
        cv2.circle(c.lab, (int(wx), int(foot - r)), max(int(r), 1), _ID["bicycle"], max(int(r * 0.25), 1))
    c.line((x - 1.4 * r, foot - r), (x, foot - 2.2 * r), r * 0.2, "bicycle", frame)
    c.line((x + 1.4 * r, foot - r), (x, foot - 2.2 * r), r * 0.2, "bicycle", frame)
    _person(c, rng, x, foot - 1.6 * r, s * 0.8, label="rider")


def _pole(c: _Canvas, rng: np.random.Generator, x: float, foot: float, s: float) -> None:
    hh = s * c.h * rng.uniform(0.8, 1.2)
    c.rect(x - max(s * 3, 1), foot - hh, x + max(s * 3, 1), foot, "pole", _grey(rng, 60, 130, 5))
    r = max(s * c.h * 0.05, 2)
    if rng.random() < 0.5:  # traffic sign: disc, triangle or plate
        shape = rng.integers(3)
        col = [(200, 30, 30), (240, 240, 240), (30, 70, 180), (230, 200, 30)][rng.integers(4)]
        if shape == 0:
            c.ellipse(x, foot - hh, r, r, "traffic sign", col)
        elif shape == 1:
            c.poly([(x - r, foot - hh + r), (x + r, foot - hh + r), (x, foot - hh - r)], "traffic sign", col)
        else:
            c.rect(x - 1.3 * r, foot - hh - r * 0.7, x + 1.3 * r, foot - hh + r * 0.7, "traffic sign", col)
    else:  # traffic light: dark box with one lit lamp
        c.rect(x - r * 0.6, foot - hh - 1.8 * r, x + r * 0.6, foot - hh + 1.2 * r, "traffic light", (30, 30, 30))
        lamp = rng.integers(3)
        c.ellipse(x, foot - hh - 1.1 * r + lamp * r, r * 0.35, r * 0.35, None,
                  [(240, 40, 30), (240, 180, 30), (40, 220, 90)][lamp])


def render_scene(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One street scene: (H, W, 3) uint8 RGB image and (H, W) uint8 Cityscapes labelIds."""
    h, w = size
    c = _Canvas(h, w)
    horizon = int(h * rng.uniform(0.36, 0.5))
    base = horizon + int(h * rng.uniform(0.02, 0.1))
    vx = w * rng.uniform(0.35, 0.65)
    spread = (rng.uniform(-0.15, 0.3) * w, rng.uniform(0.7, 1.15) * w)  # road edges at the bottom row
    _background(c, rng, horizon, base, vx, spread)
    things = []  # (foot y, kind, x): drawn far to near
    for _ in range(rng.integers(1, 6)):
        things.append((rng.uniform(base + 0.05 * h, h * 1.05), "car", None))
    for kind, n in (("person", rng.integers(0, 5)), ("pole", rng.integers(1, 4)), ("tree", rng.integers(0, 3)),
                    ("rider", rng.integers(0, 2)), ("static", rng.integers(0, 3))):
        things += [(rng.uniform(base + 0.02 * h, h), kind, None) for _ in range(n)]
    for foot, kind, _ in sorted(things, key=lambda t: t[0]):
        s = (foot - horizon) / (h - horizon)  # distance scale: 0 at the horizon, 1 at the bottom row
        road_l, road_r = (vx + s * (edge - vx) for edge in spread)
        if kind == "car":
            _car(c, rng, rng.uniform(vx - s * 0.5 * w, vx + s * 0.5 * w), foot, s)
        elif kind == "person":
            side = rng.uniform(min(road_l, 0), road_l) if rng.random() < 0.5 else rng.uniform(road_r, max(road_r, w))
            _person(c, rng, side, foot, s)
        elif kind == "rider":
            _rider(c, rng, rng.uniform(0.2 * w, 0.8 * w), foot, s)
        elif kind == "pole":
            _pole(c, rng, rng.uniform(0, w), foot, s)
        elif kind == "tree":
            _tree(c, rng, rng.uniform(0, w), foot, s * h * 0.9)
        else:  # bins, boxes: "static" is ignored in evaluation
            x, r = rng.uniform(0, w), s * h * 0.05
            c.rect(x - r, foot - 1.5 * r, x + r, foot, "static", rng.uniform(30, 120, 3))
    if rng.random() < 0.5:  # ego vehicle hood (ignored), as in most Cityscapes frames
        c.ellipse(w / 2, h * 1.05, w * rng.uniform(0.5, 0.7), h * rng.uniform(0.08, 0.14), "ego vehicle",
                  _grey(rng, 10, 60, 5))
    if rng.random() < 0.3:  # unlabeled black border strip
        b = int(rng.integers(2, 6))
        c.rect(0, 0, b, h, "unlabeled", (0, 0, 0))
    img = c.img * rng.uniform(0.7, 1.2) + rng.uniform(-15, 15, 3)  # exposure and white balance
    img += _TEXTURE[c.lab][..., None] * rng.standard_normal((h, w, 1), dtype=np.float32)
    img += 12.0 * _smooth_noise(rng, h, w, 16)[..., None]  # shading
    img += rng.uniform(2, 6) * rng.standard_normal((h, w, 3), dtype=np.float32)  # sensor noise
    img = cv2.GaussianBlur(img, (3, 3), 0.7)
    return np.clip(img, 0, 255).astype(np.uint8), c.lab


def make_synthetic_cityscapes(
    out_dir: str | os.PathLike,
    num_train: int = 200,
    num_val: int = 50,
    size: tuple[int, int] = (256, 512),
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic Cityscapes-layout dataset (leftImg8bit + gtFine labelIds/labelTrainIds).

    Args:
        out_dir: dataset root; gets ``leftImg8bit/``, ``gtFine/`` and ``synthetic_seg.json``.
        num_train: frames in ``train`` (cities ``synthburg``, ``pixelstadt``).
        num_val: frames in ``val`` (city ``testheim``).
        size: (height, width) of every frame.
        seed: the dataset is a pure function of (seed, size, index).
        overwrite: replace ``leftImg8bit/`` and ``gtFine/`` of a different existing dataset.

    Returns:
        ``out_dir`` as a Path. Does nothing if it already holds a complete dataset made with the
        same arguments (as recorded in ``synthetic_seg.json``); an interrupted one is redone.
    """
    h, w = (int(v) for v in size)
    if h < 32 or w < 32:
        raise ValueError(f"size must be at least 32x32 (height, width), got {size!r}")
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train and num_val must be >= 0, got {num_train}, {num_val}")
    root = Path(out_dir)
    params = {"version": _VERSION, "num_train": int(num_train), "num_val": int(num_val),
              "size": [h, w], "seed": int(seed)}
    manifest = root / _MANIFEST
    recorded = _read_manifest(manifest)
    if recorded == {**params, "complete": True}:
        return root
    existing = [root / d for d in ("leftImg8bit", "gtFine") if (root / d).exists()]
    interrupted = recorded == {**params, "complete": False}  # same arguments, cut short: redo it
    if existing and not (overwrite or interrupted):
        raise FileExistsError(f"{root} already holds {', '.join(p.name for p in existing)} from another dataset "
                              "(different arguments or not synthetic); pass overwrite=True (--overwrite) "
                              "to replace them, or choose another folder")
    for path in existing:
        shutil.rmtree(path)
    root.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({**params, "complete": False}, indent=1) + "\n")
    for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        cities = SYNTHETIC_CITIES[split]
        for i in range(count):
            rng = np.random.default_rng(np.random.SeedSequence((seed, split_index, i)))
            image, label_ids = render_scene(rng, (h, w))
            city = cities[i % len(cities)]
            stem = f"{city}_{i // len(cities):06d}_000019"
            img_dir, gt_dir = (root / kind / split / city for kind in ("leftImg8bit", "gtFine"))
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(img_dir / f"{stem}_leftImg8bit.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(gt_dir / f"{stem}_gtFine_labelIds.png"), label_ids)
            cv2.imwrite(str(gt_dir / f"{stem}_gtFine_labelTrainIds.png"), label_ids_to_train_ids(label_ids))
    manifest.write_text(json.dumps({**params, "complete": True}, indent=1) + "\n")
    return root


def _read_manifest(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
