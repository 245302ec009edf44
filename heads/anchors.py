"""SSD default boxes ("anchors") for SSDLite.

Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016, arXiv 1512.02325,
§2.2 "Choosing scales and aspect ratios for default boxes": level ``k`` of ``m``
has scale ``s_k = s_min + (s_max - s_min) (k - 1) / (m - 1)``, boxes of aspect
ratio 1 at ``s_k`` and ``sqrt(s_k s_{k+1})`` plus ``s_k sqrt(a) x s_k / sqrt(a)``
and its transpose for each ratio ``a``. SSDLite (MobileNetV2 §6.2, MobileNetV3
§6.3) uses 6 levels, ratios {2, 3}, ``s_min=0.2``, ``s_max=0.95``: exactly
torchvision's ``DefaultBoxGenerator([[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95)``,
whose numbers this module reproduces (``tests/heads/test_anchors.py``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["DefaultBoxes"]


class DefaultBoxes:
    """Default boxes of every level, in pixels (xyxy), ordered as the head's outputs.

    The order is level-major, then location (row-major), then box: the order in
    which :class:`~mobiledense.heads.ssdlite.ScoringHead` flattens its maps.

    Args:
        aspect_ratios: per level, the ratios ``a > 1`` (each adds 2 boxes).
        min_ratio: ``s_min``, the scale of the first level (fraction of the image side).
        max_ratio: ``s_max``, the scale of the last level; the extra scale 1.0 closes
            the list (used only by the last level's ``sqrt(s_k s_{k+1})`` box).
        clip: clamp widths/heights to [0, 1] of the image (torchvision's default).
        reduce_boxes_in_lowest_layer: the TF Object Detection API option the paper's
            numbers were produced with: the first level gets only 3 boxes, scale 0.1
            at ratio 1 and ``s_min`` at ratios 2 and 1/2 (TF ``create_ssd_anchors``).
    """

    def __init__(
        self,
        aspect_ratios: Sequence[Sequence[float]] = ((2, 3),) * 6,
        min_ratio: float = 0.2,
        max_ratio: float = 0.95,
        clip: bool = True,
        reduce_boxes_in_lowest_layer: bool = False,
    ) -> None:
        m = len(aspect_ratios)
        if m == 0:
            raise ValueError("DefaultBoxes needs at least one level of aspect_ratios")
        if not 0 < min_ratio <= max_ratio:
            raise ValueError(f"need 0 < min_ratio <= max_ratio, got {min_ratio}, {max_ratio}")
        self.aspect_ratios = [list(r) for r in aspect_ratios]
        self.clip = clip
        self.reduce_boxes_in_lowest_layer = reduce_boxes_in_lowest_layer
        if m > 1:
            self.scales = [min_ratio + (max_ratio - min_ratio) * k / (m - 1.0) for k in range(m)] + [1.0]
        else:
            self.scales = [min_ratio, max_ratio]
        self.wh = [self._level_wh(k) for k in range(m)]
        self._cache: dict[tuple, Tensor] = {}  # one entry: the last (grids, size, dtype, device)

    def _level_wh(self, k: int) -> Tensor:
        """(B_k, 2) widths/heights of level ``k`` as fractions of the image side."""
        s_k = self.scales[k]
        if k == 0 and self.reduce_boxes_in_lowest_layer:
            r = math.sqrt(2.0)
            pairs = [[0.1, 0.1], [s_k * r, s_k / r], [s_k / r, s_k * r]]
        else:
            s_prime = math.sqrt(s_k * self.scales[k + 1])
            pairs = [[s_k, s_k], [s_prime, s_prime]]
            for ar in self.aspect_ratios[k]:
                w, h = s_k * math.sqrt(ar), s_k / math.sqrt(ar)
                pairs += [[w, h], [h, w]]
        wh = torch.as_tensor(pairs, dtype=torch.float32)
        return wh.clamp(0, 1) if self.clip else wh

    @property
    def num_levels(self) -> int:
        return len(self.aspect_ratios)

    def num_anchors_per_location(self) -> list[int]:
        return [len(wh) for wh in self.wh]

    def normalized(self, grid_sizes: Sequence[Sequence[int]], dtype: torch.dtype = torch.float32) -> Tensor:
        """(A, 4) boxes as (cx, cy, w, h) fractions of the image; centres at ``(i + 0.5) / f_k``."""
        if len(grid_sizes) != self.num_levels:
            raise ValueError(
                f"DefaultBoxes has {self.num_levels} levels but got {len(grid_sizes)} feature maps")
        levels = []
        for (fh, fw), wh in zip(grid_sizes, self.wh):
            cy = ((torch.arange(fh) + 0.5) / fh).to(dtype)
            cx = ((torch.arange(fw) + 0.5) / fw).to(dtype)
            cy, cx = torch.meshgrid(cy, cx, indexing="ij")
            centres = torch.stack((cx.reshape(-1), cy.reshape(-1)), dim=-1)  # (HW, 2)
            b = len(wh)
            centres = centres[:, None, :].expand(-1, b, -1)
            sizes = wh.to(dtype)[None, :, :].expand(fh * fw, -1, -1)
            levels.append(torch.cat((centres, sizes), dim=-1).reshape(-1, 4))
        return torch.cat(levels)

    def __call__(
        self,
        grid_sizes: Sequence[Sequence[int]],
        image_size: Sequence[int],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """(A, 4) xyxy boxes in pixels of an ``image_size = (h, w)`` input (cached per shape)."""
        key = (tuple(map(tuple, grid_sizes)), tuple(image_size), dtype, str(device))
        if key not in self._cache:
            self._cache = {key: self._pixels(grid_sizes, image_size, dtype).to(device=device)}
        return self._cache[key]

    def _pixels(self, grid_sizes: Sequence[Sequence[int]], image_size: Sequence[int],
                dtype: torch.dtype) -> Tensor:
        boxes = self.normalized(grid_sizes, dtype)
        xy_size = torch.tensor([image_size[1], image_size[0]])
        boxes = torch.cat(
            [(boxes[:, :2] - 0.5 * boxes[:, 2:]) * xy_size, (boxes[:, :2] + 0.5 * boxes[:, 2:]) * xy_size], -1
        )
        return boxes

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(aspect_ratios={self.aspect_ratios}, scales="
            f"{[round(s, 4) for s in self.scales]}, clip={self.clip}, "
            f"reduce_boxes_in_lowest_layer={self.reduce_boxes_in_lowest_layer})"
        )
