"""The PNGs people read: what is drawn, checked on the pixels and on the figures that are saved.

Confusion matrix: readable cells, rows without ground truth marked as such, the void column
explained. Segmentation: a legend of the classes present, region outlines that keep dark
classes ("building") visible. Detection: tags that neither collide nor leave the image, the
ground truth beside the predictions (``eval det`` writes them). ``compare``: axes that do not
blow a 0.6-point gap up to the whole plot.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from mobiledense.datasets.cityscapes_labels import CLASS_NAMES, TRAIN_ID_COLORS, colorize_train_ids
from mobiledense.tools.comparison.report import MIN_ACCURACY_SPAN, accuracy_limits, plot_tradeoff, tradeoff_figure
from mobiledense.tools.evaluation.overlays import (blend_segmentation, draw_detections, place_labels,
                                                   segmentation_colour, segmentation_legend, segmentation_overlay)
from mobiledense.tools.evaluation.reports import NO_GT_GREY, confusion_figure, plot_confusion_matrix

ROAD, BUILDING, SKY, CAR = (CLASS_NAMES.index(n) for n in ("road", "building", "sky", "car"))


def _count(img_rgb: np.ndarray, colour) -> int:
    return int((img_rgb == np.asarray(colour, dtype=np.uint8)).all(-1).sum())


def _conf(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.integers(0, 50, (19, 19)) + 1000 * np.eye(19, dtype=np.int64),
                           rng.integers(0, 50, (19, 1))], 1)  # (K, K + 1): last column = void


# -- confusion matrix ---------------------------------------------------------------------------------------


def test_confusion_cells_are_big_enough_to_read(tmp_path: Path) -> None:
    conf = _conf()
    fig = confusion_figure(conf, CLASS_NAMES)
    ax = fig.axes[0]
    dpi = 120  # what plot_confusion_matrix saves at
    (x0, y0), (x1, y1) = ax.transData.transform([(0, 0), (1, 1)]) * dpi / fig.dpi
    assert abs(x1 - x0) >= 40 and abs(y1 - y0) >= 40  # px per cell in the PNG
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in ax.texts}
    assert len(cells) == int((conf > 0).sum())
    assert all(t.get_fontsize() >= 7 for t in cells.values())
    assert cells[(0, 0)].get_text() == f"{100 * conf[0, 0] / conf[0].sum():.0f}"  # percent of the row
    img = cv2.imread(str(plot_confusion_matrix(conf, CLASS_NAMES, tmp_path / "cm.png")))
    assert img.shape[1] >= 20 * 40 and img.shape[0] >= 19 * 40
    raw = confusion_figure(conf * 1000, CLASS_NAMES, normalize=False).axes[0]
    assert {t.get_text() for t in raw.texts} >= {"1.0M"}  # counts compact: 1000000 would not fit a cell


def test_rows_without_ground_truth_are_grey_and_say_so(tmp_path: Path) -> None:
    conf = _conf()
    grey = tuple(int(NO_GT_GREY[i:i + 2], 16) for i in (5, 3, 1))  # BGR
    full = cv2.imread(str(plot_confusion_matrix(conf, CLASS_NAMES, tmp_path / "full.png")))
    assert _count(full, grey) < 500  # no colour-map cell is this grey (only a few anti-aliased text pixels)
    conf[CLASS_NAMES.index("wall")] = 0
    conf[CLASS_NAMES.index("train")] = 0
    img = cv2.imread(str(plot_confusion_matrix(conf, CLASS_NAMES, tmp_path / "no_gt.png")))
    assert _count(img, grey) > 2 * 20 * 40 * 10  # two grey rows of 20 cells (hatched, so not every pixel)
    ax = confusion_figure(conf, CLASS_NAMES).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[CLASS_NAMES.index("wall")] == "wall  (no GT)" and labels[ROAD] == "road"
    assert sum("no ground-truth pixels" in t.get_text() for t in ax.texts) == 2


def test_the_void_column_is_explained() -> None:
    fig = confusion_figure(_conf(), CLASS_NAMES)
    assert fig.axes[0].get_xticklabels()[-1].get_text() == "void"
    assert any(t.get_text().startswith("void: predictions outside the 19 classes") for t in fig.texts)
    assert not confusion_figure(_conf()[:, :19], CLASS_NAMES).texts  # no void column, no caption


# -- segmentation overlays ----------------------------------------------------------------------------------


def _streets(h: int = 120, w: int = 320) -> np.ndarray:
    m = np.full((h, w), ROAD, np.uint8)
    m[: h // 2] = SKY
    m[: h // 2, : w // 2] = BUILDING
    m[h - 10:, :] = 255  # ignored (ego vehicle)
    return m


def test_colour_png_has_a_legend_of_the_classes_present() -> None:
    m = _streets()
    out = segmentation_colour(m)
    h, w = m.shape
    assert out.shape[1] == w and out.shape[0] > h + 10
    np.testing.assert_array_equal(out[:h], colorize_train_ids(m))  # the image itself: the official palette
    strip = out[h:]
    legend = segmentation_legend(m, w)
    np.testing.assert_array_equal(strip, legend)
    swatch = (legend.shape[0] // 3) ** 2  # at least a third of the strip's height square
    for cls in (ROAD, BUILDING, SKY):
        assert _count(strip, TRAIN_ID_COLORS[cls]) >= swatch * 0.5, CLASS_NAMES[cls]
    for cls in (CAR, CLASS_NAMES.index("person")):  # absent classes get no swatch
        assert _count(strip, TRAIN_ID_COLORS[cls]) == 0
    np.testing.assert_array_equal(segmentation_colour(m, legend=False), colorize_train_ids(m))


def test_legend_wraps_onto_rows_and_stays_inside_the_width() -> None:
    m = np.arange(19, dtype=np.uint8).repeat(10)[None].repeat(8, 0)  # every class, equal shares
    narrow, one_row = segmentation_legend(m, 300), segmentation_legend(m[:, :10], 300)  # 19 entries; 1 entry
    assert narrow.shape[1] == 300 and narrow.shape[0] >= 4 * (one_row.shape[0] - 6)  # 19 tags need >= 4 rows
    for cls in range(19):
        assert _count(narrow, TRAIN_ID_COLORS[cls]) > 0


def test_building_stays_visible_in_the_overlay() -> None:
    """A grey facade under the dark-grey "building" colour: blending alone changes nothing; the outline does."""
    m = _streets()
    photo = np.empty(m.shape + (3,), np.uint8)
    photo[:] = TRAIN_ID_COLORS[BUILDING]
    plain = blend_segmentation(photo, colorize_train_ids(m), 0.5)
    building = m == BUILDING
    assert (plain[building] == photo[building]).all()  # the failure the outline fixes
    out = segmentation_overlay(photo, m, 0.5, legend=False)
    assert out.shape == photo.shape
    h, w = m.shape
    assert (out[: h // 2, w // 2] == 255).all()  # its border with the sky (1 px at this width), white
    assert (out[h // 2, : w // 2] == 255).all()  # and with the road
    inner = np.zeros_like(building)
    inner[5:50, 5:150] = True
    np.testing.assert_array_equal(out[inner], plain[inner])  # inside the region: the plain blend
    with_legend = segmentation_overlay(photo, m, 0.5)
    assert with_legend.shape[0] > m.shape[0] and _count(with_legend[m.shape[0]:], TRAIN_ID_COLORS[BUILDING]) > 50
    with pytest.raises(ValueError, match="differ in size"):
        segmentation_overlay(photo[:10], m)


def test_overlay_legend_of_a_real_cityscapes_frame(cityscapes_dir: Path, tmp_path: Path) -> None:
    from mobiledense.datasets.cityscapes_labels import label_ids_to_train_ids

    label = next(sorted((cityscapes_dir / "gtFine").rglob("*_gtFine_labelIds.png")).__iter__())
    frame = next((cityscapes_dir / "leftImg8bit").rglob(label.name.replace("gtFine_labelIds", "leftImg8bit")))
    m = label_ids_to_train_ids(cv2.imread(str(label), cv2.IMREAD_UNCHANGED))
    image = cv2.imread(str(frame))[..., ::-1].copy()
    out = segmentation_overlay(image, m)
    strip = out[m.shape[0]:]
    present = [c for c in range(19) if (m == c).any()]
    assert BUILDING in present
    for cls in range(19):
        n = _count(strip, TRAIN_ID_COLORS[cls])
        assert (n >= 100) if cls in present else (n < 20), (CLASS_NAMES[cls], n)  # anti-aliased text: a few
    cv2.imwrite(str(tmp_path / "overlay.png"), out[..., ::-1])


# -- detection overlays -------------------------------------------------------------------------------------


def _inside(r, h, w) -> bool:
    return 0 <= r[0] < r[2] <= w and 0 <= r[1] < r[3] <= h


def _overlaps(a, b) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def _overlap_area(a, b) -> int:
    return max(min(a[2], b[2]) - max(a[0], b[0]), 0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0)


def test_tags_stay_inside_the_image_and_do_not_collide() -> None:
    h, w = 240, 320
    boxes = np.array([[0, 0, 80, 60], [2, 1, 90, 70], [4, 3, 60, 50],  # stacked at the top-left corner
                      [250, 0, 320, 40], [200, 180, 320, 240], [100, 100, 160, 160], [105, 98, 170, 150]])
    sizes = [(70, 16)] * len(boxes)
    rects = place_labels(boxes, sizes, h, w)
    assert None not in rects  # there is room for every tag here
    assert all(_inside(r, h, w) for r in rects)
    assert not any(_overlaps(a, b) for i, a in enumerate(rects) for b in rects[i + 1:])
    # each tag touches its own box (above, inside or below it), not somewhere else in the image
    for (x1, y1, x2, y2), r in zip(boxes, rects):
        assert r[0] < x2 and r[2] > x1 and r[1] <= y2 + 3 * 16 and r[3] >= y1 - 3 * 16
    crowd = place_labels(np.array([[50, 50, 60, 60]] * 40), [(70, 16)] * 40, h, w)  # 40 tags, room for ~12
    kept = [r for r in crowd if r is not None]
    assert crowd[0] is not None and 4 < len(kept) < 40
    assert sum(_overlap_area(a, b) for i, a in enumerate(kept) for b in kept[i + 1:]) <= 0.1 * 70 * 16 * len(kept)


def test_a_box_at_the_top_edge_keeps_its_whole_tag() -> None:
    image = np.full((100, 200, 3), 40, np.uint8)
    out = draw_detections(image, np.array([[20.0, 0.0, 120.0, 60.0]]), np.array([3]), np.array([0.9]),
                          {3: "person"})
    colour = out[1, 21]  # the box line's colour, BGR
    tag = (out == colour).all(-1)
    rows = np.flatnonzero(tag[:, 30:100].any(1))
    assert rows.min() == 0 and rows.max() >= 12  # the filled tag, inside the image, under the top edge
    text = (out[:20, 20:120] != colour).any(-1) & (out[:20, 20:120] != 40).any(-1)
    assert text.sum() > 30  # its text is drawn on it


def test_ground_truth_is_drawn_beside_the_predictions() -> None:
    h, w = 120, 160
    image = np.full((h, w, 3), 128, np.uint8)
    gt = (np.array([[10.0, 30.0, 70.0, 100.0]]), np.array([1]))
    pred = (np.array([[90.0, 40.0, 150.0, 110.0]]), np.array([2]), np.array([0.8]))
    out = draw_detections(image, *pred, {1: "cat", 2: "dog"}, ground_truth=gt, score_thresh=0.3)
    gap = (out.shape[1] - 2 * w)
    assert 4 <= gap <= 16 and out.shape[0] > h
    top = out.shape[0] - h
    left, right = out[top:, :w], out[top:, w + gap:]
    cat, dog = left[60, 10], right[70, 150]  # box lines
    assert (cat != 128).any() and (dog != 128).any() and (cat != dog).any()
    assert _count(left, cat) > 100 and _count(right, cat) == 0  # the GT box only on the left
    assert _count(right, dog) > 100 and _count(left, dog) == 0
    assert (out[:top] == 255).mean() > 0.8 and (out[:top] == 0).all(-1).sum() > 20  # title bars with text
    alone = draw_detections(image, *pred, {1: "cat", 2: "dog"})
    np.testing.assert_array_equal(alone, right)  # the predictions panel is the plain overlay


# -- compare plots ------------------------------------------------------------------------------------------


def test_accuracy_limits_keep_small_gaps_small() -> None:
    for ys in ([50.1, 50.4, 50.7], [0.2, 0.3], [99.5, 99.9], [10.0, 60.0], [42.0]):
        lo, hi = accuracy_limits(ys)
        assert 0 <= lo <= min(ys) and max(ys) <= hi <= 100 and hi - lo >= MIN_ACCURACY_SPAN
    lo, hi = accuracy_limits([10.0, 60.0])
    assert hi - lo < 60  # a real spread keeps a tight axis


def test_tradeoff_plot_does_not_magnify_a_small_gap(tmp_path: Path) -> None:
    rows = [dict(status="ok", task="seg", head="lraspp", backbone=b, accuracy=a, metric="mIoU", cpu_latency_ms=t)
            for b, a, t in (("mobilenet_v3_small", 0.501, 4.0), ("shufflenet_v2_x0_5", 0.504, 5.0),
                            ("mobilenet_v2", 0.507, 6.0))]
    fig = tradeoff_figure(rows, "cpu_latency_ms", "ms", "t")
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert hi - lo >= MIN_ACCURACY_SPAN and ax.get_xlim()[0] == 0
    assert "mIoU of the cells: 50.1 to 50.7 (0.6 points" in ax.get_title()
    img = cv2.imread(str(plot_tradeoff(rows, "cpu_latency_ms", "ms", tmp_path / "t.png", "t")))
    blue = (np.abs(img.astype(int) - (180, 119, 31)).sum(-1) < 30).astype(np.uint8)  # matplotlib C0, BGR
    n, _, stats, centroids = cv2.connectedComponentsWithStats(blue)
    markers = sorted((tuple(c) for c, s in zip(centroids[1:], stats[1:]) if s[cv2.CC_STAT_AREA] > 15))
    assert len(markers) == 4  # three cells and the legend's marker (rightmost)
    ys = [y for _, y in markers[:3]]
    assert max(ys) - min(ys) < 0.08 * img.shape[0]  # 0.6 points: a few pixels, not the plot's height
