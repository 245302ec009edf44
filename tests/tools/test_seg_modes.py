"""Segmentation inference modes (whole, sliding window, multi-scale + flip TTA) against straightforward
reference implementations, and ``eval seg --mode ...`` on real Cityscapes frames (with iIoU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobiledense.heads import create_segmenter
from mobiledense.tools.benchmark import calibrate_
from mobiledense.tools.cli import main
from mobiledense.tools.engine import CityscapesDataSpec
from mobiledense.tools.engine.tasks import SegmentationTask, load_trained_model, save_model_checkpoint
from mobiledense.tools.evaluation import evaluate_segmenter
from mobiledense.tools.evaluation.seg_inference import MultiScaleFlip, SlidingWindow, inference_mode, slide_windows


class PositionNet(nn.Module):
    """A conv net whose logits depend on where a pixel sits in its input (zero padding): a window's
    placement changes its output, so a misplaced window cannot go unnoticed."""

    def __init__(self, k: int = 5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 5, padding=2), nn.ReLU(), nn.Conv2d(8, k, 5, padding=2, stride=2))
        self.num_classes = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.body(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


class Fn(nn.Module):
    def __init__(self, fn) -> None:  # noqa: ANN001
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _reference_slide(model: nn.Module, x: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """Window by window: tops 0, s, 2s ... while the window fits, then one flush with the border."""
    _, _, h, w = x.shape

    def starts(size: int, c: int, s: int) -> list[int]:
        if size <= c:
            return [0]
        out = list(range(0, size - c + 1, s))
        return out if out[-1] == size - c else out + [size - c]

    total = torch.zeros(x.shape[0], model.num_classes, h, w)
    seen = torch.zeros(1, 1, h, w)
    for y in starts(h, crop[0], stride[0]):
        for x0 in starts(w, crop[1], stride[1]):
            window = x[..., y:y + crop[0], x0:x0 + crop[1]]
            total[..., y:y + window.shape[-2], x0:x0 + window.shape[-1]] += model(window)
            seen[..., y:y + window.shape[-2], x0:x0 + window.shape[-1]] += 1
    assert seen.min() >= 1
    return total / seen


def _reference_tta(model: nn.Module, x: torch.Tensor, scales, flip: bool) -> torch.Tensor:
    h, w = x.shape[-2:]
    probs = []
    for s in scales:
        size = (round(h * s), round(w * s))
        xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=s < 1) if s != 1 else x
        views = [(xs, False)] + ([(torch.flip(xs, dims=[3]), True)] if flip else [])
        for view, mirrored in views:
            out = model(view)
            out = torch.flip(out, dims=[3]) if mirrored else out
            probs.append(torch.softmax(F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False), 1))
    return torch.stack(probs).mean(0)


@pytest.mark.parametrize("size,crop,stride", [((70, 150), (32, 64), (21, 43)), ((64, 128), (32, 64), (32, 64)),
                                              ((40, 50), (64, 64), (40, 40)), ((97, 61), (48, 48), (16, 16))])
def test_sliding_window_equals_the_reference(size, crop, stride) -> None:
    model = PositionNet().eval()
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = SlidingWindow(model, crop, stride, batch=3)(x)
        torch.testing.assert_close(ours, _reference_slide(model, x, crop, stride), atol=1e-5, rtol=1e-5)
        if size[0] <= crop[0] and size[1] <= crop[1]:
            torch.testing.assert_close(ours, model(x))  # one window: the whole image
        else:
            assert not torch.allclose(ours, model(x), atol=1e-3)  # windows see other context
    h, w = size
    windows = slide_windows(h, w, crop, stride)
    covered = torch.zeros(h, w)
    for y1, y2, x1, x2 in windows:
        covered[y1:y2, x1:x2] = 1
    assert covered.all() and all(y2 - y1 == min(crop[0], h) and x2 - x1 == min(crop[1], w)
                                 for y1, y2, x1, x2 in windows)


def test_sliding_window_mmseg_cityscapes_grid() -> None:
    # MMSegmentation's Cityscapes setting: 1024x2048 frames, 512x1024 crops, stride 341x682 -> 3 x 3 windows
    windows = slide_windows(1024, 2048, (512, 1024), (341, 682))
    assert len(windows) == 9 and windows[-1] == (512, 1024, 1024, 2048) and windows[1] == (0, 512, 682, 1706)


@pytest.mark.parametrize("scales,flip", [((0.5, 1.0, 1.5), True), ((0.75, 1.25), False), ((1.0,), True)])
def test_multiscale_flip_equals_the_reference(scales, flip) -> None:
    model = PositionNet().eval()
    x = torch.rand(1, 3, 48, 80, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = MultiScaleFlip(model, scales, flip)(x)
        torch.testing.assert_close(ours, _reference_tta(model, x, scales, flip), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.sum(1), torch.ones(1, 48, 80))  # averaged probabilities
        plain = MultiScaleFlip(model, (1.0,), False)(x)
        torch.testing.assert_close(plain, model(x).softmax(1))
        slide_tta = inference_mode(model, "slide+tta", crop=(32, 48), stride=(16, 24), scales=scales, flip=flip)(x)
        reference = _reference_tta(lambda v: _reference_slide(model, v, (32, 48), (16, 24)), x, scales, flip)
        torch.testing.assert_close(slide_tta, reference, atol=1e-5, rtol=1e-5)


def test_mode_errors_say_what_is_wrong() -> None:
    model = PositionNet()
    with pytest.raises(ValueError, match="mode must be one of whole, slide, tta, slide\\+tta"):
        inference_mode(model, "sliding")
    with pytest.raises(ValueError, match="slide mode needs a crop size"):
        inference_mode(model, "slide")
    with pytest.raises(ValueError, match="larger than the crop"):
        SlidingWindow(model, (32, 32), (40, 16))
    with pytest.raises(ValueError, match="scales must be positive"):
        MultiScaleFlip(model, (0.0, 1.0))


def test_eval_seg_modes_on_real_frames_equal_the_references(cityscapes_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_segmenter("mobilenet_v3_small", 19, pool="global")
    calibrate_(model, lambda m: m(torch.rand(2, 3, 64, 128)))
    data = CityscapesDataSpec(root=str(cityscapes_dir), train_split="train", val_split="train", crop=(64, 128),
                              base_size=(128, 256))
    ckpt = save_model_checkpoint(model, data, tmp_path / "ckpt" / "last.pt")
    out = tmp_path / "eval"
    assert main(["eval", "seg", "--checkpoint", str(ckpt), "--mode", "whole", "slide", "tta", "--scales", "0.75",
                 "1.0", "--eager", "--workers", "0", "--no-progress", "--output-dir", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    modes = report["modes"]
    assert list(modes) == ["whole", "slide", "tta"]
    assert modes["slide"]["crop"] == [64, 128] and modes["slide"]["stride"] == [43, 85]
    assert modes["tta"]["scales"] == [0.75, 1.0] and modes["tta"]["flip"] is True
    net, spec = load_trained_model(ckpt, "seg")
    task = SegmentationTask(spec)
    dataset = task.val_set()
    assert len(dataset) == 8
    references = {"whole": net, "slide": Fn(lambda x: _reference_slide(net, x, (64, 128), (43, 85))),
                  "tta": Fn(lambda x: _reference_tta(net, x, (0.75, 1.0), True))}
    for mode, ref in references.items():
        m = evaluate_segmenter(ref, dataset, progress=False)
        assert modes[mode]["mIoU"] == pytest.approx(m.miou, abs=1e-6), mode  # (float rounding: a rare argmax tie)
        assert m.iiou_per_class is not None and modes[mode]["iIoU"] == pytest.approx(m.iiou, abs=1e-6), mode
    assert report["mIoU"] == modes["whole"]["mIoU"] and not math.isnan(report["iIoU"])
    assert report["iIoU/car"] is not None  # aachen has cars; per-class iIoU in the report
    assert len({modes[m]["mIoU"] for m in modes}) == 3  # three different predictions
