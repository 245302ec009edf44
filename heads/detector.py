"""SSDLite detector: the SSD meta-architecture around any registered backbone.

Howard et al., "Searching for MobileNetV3", arXiv 1905.02244, §6.3 and Table 6:
SSDLite on C4 (the expansion layer of the last stride-16 block, ``tap="expansion"``)
and C5 (the last 1x1 conv), plus 4 extra layers, 320x320 input. The wrapper owns the
transform (resize + normalise), default boxes, box coder, matcher, loss and
post-processing; the head (:mod:`mobiledense.heads.ssdlite`) only predicts. The API
and numbers are torchvision's ``SSD`` / ``ssdlite320_mobilenet_v3_large``
(``tests/heads/test_torchvision_equivalence.py``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from torchvision.ops import box_iou, clip_boxes_to_image, nms

from mobiledense.backbones import Backbone, count_madds, create_backbone, list_backbones, load_state_dict_file

from .anchors import DefaultBoxes
from .box_coder import BoxCoder
from .losses import focal_multibox_loss, multibox_loss
from .matcher import SSDMatcher
from .ssdlite import BatchNorm, SSDLiteHead, extra_blocks, normal_init

__all__ = [
    "SSDLite",
    "select_detections",
    "batched_nms_topn",
    "create_detector",
    "list_detectors",
    "get_detector_factory",
    "build_ssdlite",
    "ssdlite320_mobilenet_v3_large",
    "ssdlite_mobilenet_v3_small",
    "ssdlite_mobilenet_v2",
    "from_torchvision_ssdlite",
    "detector_madds",
]

Images = Sequence[Tensor] | Tensor
Targets = Sequence[dict[str, Tensor]]


def select_detections(
    boxes: Tensor, scores: Tensor, score_thresh: float, topk_candidates: int, nms_thresh: float,
    detections_per_img: int,
) -> dict[str, Tensor]:
    """torchvision's SSD post-processing of one image, without a loop over classes.

    Per class (column ``j`` of ``scores`` is label ``j + 1``): keep scores above
    ``score_thresh``, then the ``topk_candidates`` best; then class-wise NMS and the
    ``detections_per_img`` best overall, by decreasing score: the detections of
    torchvision's ``SSD.postprocess_detections``.

    Only the best candidates can reach the output, so when there are many (an untrained
    network puts nearly every (anchor, class) pair above 0.001) the work is done on a
    prefix: the ``m`` best scores of the image (one ``topk``), ranked within their class
    to apply the per-class top-k (exact: every better candidate of the same class is in
    the prefix), then NMS (:func:`batched_nms_topn`). NMS keeps or drops a box by looking
    only at better boxes, so once the prefix yields ``detections_per_img`` survivors, or
    holds every candidate that passes the per-class top-k, the rest cannot change the
    output; otherwise ``m`` grows 4x.

    Args:
        boxes: (A, 4) decoded xyxy boxes. scores: (A, K) foreground class scores.
    """
    num_classes = scores.shape[1]
    above = scores > score_thresh
    per_class = above.sum(0)
    num_above = int(per_class.sum())
    k = min(topk_candidates, scores.shape[0])
    if k <= 0 or num_above == 0 or detections_per_img <= 0:
        empty = torch.zeros(0, dtype=torch.int64, device=scores.device)
        return {"boxes": boxes.new_zeros((0, 4)), "scores": scores.new_zeros(0), "labels": empty}
    num_valid = int(per_class.clamp(max=k).sum())  # candidates that pass the per-class top-k
    m = num_above if num_above <= 64 * detections_per_img else 4 * detections_per_img
    while True:
        cand, anchor_idx, cls_idx = _best_candidates(scores, above, m, num_above)
        by_class = cls_idx.argsort(stable=True)  # grouped by class, best first
        counts = torch.bincount(cls_idx, minlength=num_classes)
        rank = torch.empty_like(cls_idx)
        rank[by_class] = torch.arange(m, device=cls_idx.device) - (counts.cumsum(0) - counts)[cls_idx[by_class]]
        ok = rank < k
        sel_boxes, sel_scores, labels = boxes[anchor_idx[ok]], cand[ok], cls_idx[ok] + 1
        keep = batched_nms_topn(sel_boxes, sel_scores, labels, nms_thresh, detections_per_img)
        if len(keep) >= detections_per_img or m == num_above or len(sel_scores) == num_valid:
            return {"boxes": sel_boxes[keep], "scores": sel_scores[keep], "labels": labels[keep]}
        m = num_above if 8 * m >= num_above else 4 * m


def _best_candidates(scores: Tensor, above: Tensor, m: int, num_above: int) -> tuple[Tensor, Tensor, Tensor]:
    """(score, anchor, class) of the ``m`` best entries of ``scores`` above the threshold, best first."""
    if m < num_above:
        cand, idx = scores.reshape(-1).topk(m)
        return cand, idx // scores.shape[1], idx % scores.shape[1]
    anchor_idx, cls_idx = torch.nonzero(above, as_tuple=True)
    cand = scores[anchor_idx, cls_idx]
    order = cand.argsort(descending=True, stable=True)
    return cand[order], anchor_idx[order], cls_idx[order]


def batched_nms_topn(boxes: Tensor, scores: Tensor, labels: Tensor, iou_thresh: float, max_keep: int) -> Tensor:
    """``torchvision.ops.batched_nms(boxes, scores, labels, iou_thresh)[:max_keep]`` for sorted input.

    ``scores`` must be sorted in decreasing order. Greedy NMS keeps or drops a box by
    looking only at higher-scored boxes, so NMS on a prefix of the candidates decides
    that prefix exactly as NMS on all of them would; once a prefix yields ``max_keep``
    survivors the rest cannot enter the output. The prefix starts at ``4 * max_keep``
    and grows 4x until it does (or covers everything). Classes are kept apart with
    per-class coordinate offsets computed in float64, where they are exact (float32
    offsets, as in ``batched_nms``'s own trick, round box sides by up to ~1e-3 px).
    """
    n = len(boxes)
    if n == 0 or max_keep <= 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    b = boxes.double()
    b = b - b.min()
    b = b + (labels.double() * (b.max() + 1.0))[:, None]
    s = scores.double()
    m = min(n, 4 * max_keep)
    while True:
        keep = nms(b[:m], s[:m], iou_thresh)
        if len(keep) >= max_keep or m == n:
            return keep[:max_keep]
        m = min(n, 4 * m)


def _feature_strides(backbone: Backbone) -> tuple[int, int]:
    """(C4, C5) strides: the backbone's deepest stride and half of it."""
    name = type(backbone).__name__
    channels = getattr(backbone, "channels", None)
    if not channels:
        raise ValueError(f"SSDLite needs a Backbone with declared channels; {name} has none")
    native = max(getattr(backbone, "supported_output_strides", (backbone.output_stride,)))
    if backbone.output_stride != native:
        raise ValueError(f"SSDLite needs an undilated backbone: build {name} with output_stride={native} "
                         f"(got output_stride={backbone.output_stride})")
    c5 = max(channels)
    if c5 // 2 not in channels:
        raise ValueError(
            f"SSDLite reads strides {c5 // 2} and {c5}, but {name}.channels has {sorted(channels)}")
    return c5 // 2, c5


class SSDLite(nn.Module):
    """SSDLite detector with torchvision's ``SSD`` API.

    ``model(images, targets)`` in training mode returns ``{"bbox_regression",
    "classification"}`` losses; in eval mode ``model(images)`` returns, per image,
    ``{"boxes" (M, 4) xyxy in original pixels, "scores" (M,), "labels" (M,) int64}``.
    ``images`` are float RGB in [0, 1]: a list of (3, H, W) of any sizes, or an (N, 3, H, W) batch.

    Args:
        backbone: an undilated :class:`~mobiledense.backbones.Backbone`; its two deepest
            features are the first two levels (``strides``): ``feats[16]`` and ``feats[32]``,
            or ``feats[8]`` and ``feats[16]`` for a stride-16 network such as SqueezeNet
            (SSD's own VGG layout, conv4_3 and fc7). Channels come from ``backbone.channels``.
        num_classes: classes including the background (91 for COCO as torchvision).
        size: input size, int or (h, w); images are resized to it (320 in the paper).
        width_mult / min_depth: extra-layer depths ``max(min_depth, d * width_mult)``.
        norm_layer: BN of the head and extra layers (eps 1e-3, momentum 0.03).
        image_mean / image_std: normalisation; 0.5 maps [0, 1] to [-1, 1] as torchvision.
        score_thresh / topk_candidates / nms_thresh / detections_per_img: post-processing
            (see :func:`select_detections`), torchvision's ssdlite defaults.
        iou_thresh: matcher threshold. neg_to_pos_ratio: hard-negative mining ratio (3:1).
        loss: ``"multibox"`` (softmax CE + hard negatives, the paper's) or ``"focal"``
            (sigmoid focal loss; scores then use sigmoid and the class bias starts at the
            RetinaNet prior). focal_alpha / focal_gamma: its parameters.
        reduce_boxes_in_lowest_layer / min_ratio / max_ratio: default boxes (see DefaultBoxes).
    """

    def __init__(
        self, backbone: Backbone, num_classes: int, size: int | tuple[int, int] = 320, *,
        width_mult: float = 1.0, min_depth: int = 16, norm_layer: Callable[..., nn.Module] = BatchNorm,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5), image_std: Sequence[float] = (0.5, 0.5, 0.5),
        score_thresh: float = 0.001, nms_thresh: float = 0.55, detections_per_img: int = 300,
        topk_candidates: int = 300, iou_thresh: float = 0.5, neg_to_pos_ratio: float = 3.0,
        loss: Literal["multibox", "focal"] = "multibox", focal_alpha: float = 0.25, focal_gamma: float = 2.0,
        min_ratio: float = 0.2, max_ratio: float = 0.95, reduce_boxes_in_lowest_layer: bool = False,
    ) -> None:
        super().__init__()
        self.strides = _feature_strides(backbone)
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
        if loss not in ("multibox", "focal"):
            raise ValueError(f"loss must be 'multibox' or 'focal', got {loss!r}")
        self.backbone = backbone
        c4, c5 = self.strides
        self.extra = extra_blocks(backbone.channels[c5], width_mult, min_depth, norm_layer)
        self.anchor_generator = DefaultBoxes(((2, 3),) * (2 + len(self.extra)), min_ratio, max_ratio,
                                             reduce_boxes_in_lowest_layer=reduce_boxes_in_lowest_layer)
        in_channels = [backbone.channels[c4], backbone.channels[c5]]
        in_channels += [block[-1].out_channels for block in self.extra]
        prior = -math.log((1 - 0.01) / 0.01) if loss == "focal" else 0.0
        self.head = SSDLiteHead(in_channels, self.anchor_generator.num_anchors_per_location(), num_classes,
                                norm_layer, cls_bias=prior)
        self.box_coder, self.matcher = BoxCoder((10.0, 10.0, 5.0, 5.0)), SSDMatcher(iou_thresh)
        self.num_classes, self.size = num_classes, (size, size) if isinstance(size, int) else tuple(size)
        self.register_buffer("image_mean", torch.tensor(image_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std, dtype=torch.float32), persistent=False)
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img, self.topk_candidates = detections_per_img, topk_candidates
        self.neg_to_pos_ratio, self.loss = neg_to_pos_ratio, loss
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    # ------------------------------------------------------------------ forward
    def forward(self, images: Images, targets: Targets | None = None
                ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        images = self._check_images(images)
        if self.training:
            if targets is None:
                raise ValueError("SSDLite in training mode needs targets (list of dicts with 'boxes' and "
                                 "'labels'); call model.eval() for inference")
            self._check_targets(targets, len(images))
        batch, targets, orig_sizes = self.transform(images, targets if self.training else None)
        if self.training:
            return self.forward_training(batch, targets)
        return self.forward_inference(batch, orig_sizes)

    def features(self, batch: Tensor) -> list[Tensor]:
        """The 6 SSDLite maps: C4 = feats[16], C5 = feats[32] (see ``strides``), then the extra layers."""
        feats = self.backbone(batch)
        maps = [feats[s] for s in self.strides]
        for block in self.extra:
            maps.append(block(maps[-1]))
        return maps

    def head_outputs(self, batch: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Raw ``{"cls_logits" (N, A, C), "bbox_regression" (N, A, 4)}`` and the (A, 4) anchors."""
        maps = self.features(batch)
        # float32 anchors even under autocast: matching and encoding need the precision.
        grids = [m.shape[-2:] for m in maps]
        anchors = self.anchor_generator(grids, batch.shape[-2:], torch.float32, batch.device)
        return self.head(maps), anchors

    def forward_training(self, batch: Tensor, targets: Targets) -> dict[str, Tensor]:
        """Losses of a transformed batch with targets in its pixel coordinates."""
        outputs, anchors = self.head_outputs(batch)
        cls_targets, box_targets = self.match(anchors, targets)
        if self.loss == "focal":
            return focal_multibox_loss(outputs["cls_logits"], outputs["bbox_regression"], cls_targets,
                                       box_targets, self.focal_alpha, self.focal_gamma)
        return multibox_loss(outputs["cls_logits"], outputs["bbox_regression"], cls_targets, box_targets,
                             self.neg_to_pos_ratio)

    def forward_inference(self, batch: Tensor, orig_sizes: Sequence[tuple[int, int]] | None = None
                          ) -> list[dict[str, Tensor]]:
        """Detections of a transformed batch, mapped back to ``orig_sizes`` (h, w) when given."""
        boxes, scores = self.dense_predictions(batch)
        return self.postprocess_detections(boxes, scores, batch.shape[-2:], orig_sizes)

    def dense_predictions(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        """(N, A, 4) decoded xyxy boxes clipped to the batch and (N, A, C - 1) foreground scores.

        Softmax (sigmoid with ``loss="focal"``) over each anchor's logits, computed once;
        everything before NMS, and what the ONNX export returns (``mobiledense export``).
        """
        outputs, anchors = self.head_outputs(batch)
        logits = outputs["cls_logits"]
        scores = (logits.sigmoid() if self.loss == "focal" else F.softmax(logits, dim=-1))[..., 1:]
        boxes = self.box_coder.decode(outputs["bbox_regression"], anchors)
        return clip_boxes_to_image(boxes, batch.shape[-2:]), scores

    def postprocess_detections(self, boxes: Tensor, scores: Tensor, image_size: Sequence[int],
                               orig_sizes: Sequence[tuple[int, int]] | None = None) -> list[dict[str, Tensor]]:
        """Per image :func:`select_detections` on :meth:`dense_predictions`, boxes scaled to ``orig_sizes``."""
        h, w = image_size
        results = []
        for i in range(len(boxes)):
            det = select_detections(boxes[i], scores[i], self.score_thresh, self.topk_candidates,
                                    self.nms_thresh, self.detections_per_img)
            if orig_sizes is not None:
                oh, ow = orig_sizes[i]
                scale = [ow / w, oh / h, ow / w, oh / h]
                det["boxes"] = det["boxes"] * det["boxes"].new_tensor(scale)
            results.append(det)
        return results

    def match(self, anchors: Tensor, targets: Targets) -> tuple[Tensor, Tensor]:
        """(N, A) class targets (0 = background) and (N, A, 4) encoded boxes (0 at background).

        The whole batch at once: ground truth padded to the largest count, one IoU matrix,
        one matcher call and one encoding (no loop over images on the device).
        """
        n, a = len(targets), len(anchors)
        counts = [len(t["boxes"]) for t in targets]
        if max(counts, default=0) == 0:
            return anchors.new_zeros((n, a), dtype=torch.int64), anchors.new_zeros((n, a, 4))
        gt = pad_sequence([t["boxes"].to(anchors) for t in targets], batch_first=True)  # (N, G, 4)
        labels = pad_sequence([t["labels"].to(anchors.device) for t in targets], batch_first=True)
        num_gt = torch.tensor(counts, device=anchors.device)
        valid = torch.arange(gt.shape[1], device=anchors.device)[None] < num_gt[:, None]
        iou = box_iou(gt.reshape(-1, 4), anchors).view(n, -1, a)
        matches = self.matcher.match_batch(iou, valid)
        fg, idx = matches >= 0, matches.clamp(min=0)
        cls_targets = torch.where(fg, labels.gather(1, idx), 0)
        matched = gt.gather(1, idx[..., None].expand(-1, -1, 4))
        box_targets = torch.where(fg[..., None], self.box_coder.encode(matched, anchors), 0.0)
        return cls_targets, box_targets

    # ------------------------------------------------------------------ transform
    def transform(self, images: Sequence[Tensor] | Tensor, targets: Targets | None = None
                  ) -> tuple[Tensor, list[dict[str, Tensor]] | None, list[tuple[int, int]]]:
        """Normalise, resize to ``size`` (bilinear, as torchvision) and rescale target boxes."""
        orig_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        if isinstance(images, Tensor):
            batch = self._normalize_resize(images)
        else:
            batch = torch.cat([self._normalize_resize(im[None]) for im in images])
        if targets is not None:
            new_h, new_w = (torch.tensor(s, dtype=torch.float32) for s in self.size)
            scaled = []
            for t, (h, w) in zip(targets, orig_sizes):
                ratio = torch.stack([new_w / w, new_h / h, new_w / w, new_h / h]).to(t["boxes"].device)
                scaled.append({**t, "boxes": t["boxes"] * ratio})
            targets = scaled
        return batch, targets, orig_sizes

    def _normalize_resize(self, x: Tensor) -> Tensor:
        """``resize((x - mean) / std)`` as torchvision computes it, at the cost of the smaller side.

        Bilinear weights sum to one, so normalising commutes with resizing (up to float
        rounding): it is done on whichever of input and output has fewer pixels.
        """
        mean, std = self.image_mean.to(x)[:, None, None], self.image_std.to(x)[:, None, None]
        if tuple(x.shape[-2:]) == self.size:
            return (x - mean) / std
        if x.shape[-2] * x.shape[-1] < self.size[0] * self.size[1]:
            return self._resize((x - mean) / std)
        return self._resize(x).sub_(mean).div_(std)

    def _resize(self, x: Tensor) -> Tensor:
        # On one CPU thread PyTorch's bilinear kernel is faster on NHWC 3-channel images,
        # with several threads on NCHW ones (measured: 1.0 vs 1.3 ms, 0.9 vs 0.3 ms at 480x640).
        if x.device.type == "cpu" and torch.get_num_threads() == 1:
            x = x.contiguous(memory_format=torch.channels_last)
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False).contiguous()

    # ------------------------------------------------------------------ checks
    def _check_images(self, images: Images) -> Sequence[Tensor] | Tensor:
        chans = getattr(self.backbone, "in_chans", 3)
        if isinstance(images, Tensor):
            if images.dim() != 4:
                raise ValueError(f"SSDLite expects an (N, {chans}, H, W) batch or a list of ({chans}, H, W) "
                                 f"images, got a tensor of shape {tuple(images.shape)}"
                                 + ("; wrap a single image as [image]" if images.dim() == 3 else ""))
            listed: Sequence[Tensor] = list(images)
        else:
            listed = list(images)
            if not listed:
                raise ValueError("SSDLite got an empty list of images")
        for i, im in enumerate(listed):
            if not isinstance(im, Tensor) or im.dim() != 3 or im.shape[0] != chans:
                shape = tuple(im.shape) if isinstance(im, Tensor) else type(im).__name__
                raise ValueError(f"image {i}: expected a ({chans}, H, W) RGB tensor, got {shape}")
            if not im.is_floating_point():
                raise ValueError(f"image {i}: expected float values in [0, 1], got dtype {im.dtype} "
                                 "(convert with image.float() / 255)")
        return images if isinstance(images, Tensor) else listed

    def _check_targets(self, targets: Targets, num_images: int) -> None:
        if len(targets) != num_images:
            raise ValueError(f"got {num_images} images but {len(targets)} targets")
        for i, t in enumerate(targets):
            if not isinstance(t, dict) or "boxes" not in t or "labels" not in t:
                raise ValueError(f"target {i}: expected a dict with 'boxes' and 'labels'")
            boxes, labels = t["boxes"], t["labels"]
            if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
                shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
                raise ValueError(f"target {i}: 'boxes' must be a float (N, 4) xyxy tensor, got {shape}")
            if (not isinstance(labels, Tensor) or labels.shape != boxes.shape[:1]
                    or labels.is_floating_point()):
                shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
                raise ValueError(f"target {i}: 'labels' must be an int64 ({len(boxes)},) tensor, got {shape}")
            bad = (labels < 1) | (labels >= self.num_classes)
            if bad.any():
                raise ValueError(f"target {i}: label {int(labels[bad][0])} out of range; labels must be "
                                 f"in 1..{self.num_classes - 1} (0 is background, "
                                 f"num_classes={self.num_classes})")
            degenerate = (boxes[:, 2:] <= boxes[:, :2]).any(1) | ~torch.isfinite(boxes).all(1)
            if degenerate.any():
                j = int(torch.nonzero(degenerate)[0])
                raise ValueError(f"target {i}: box {j} {boxes[j].tolist()} is degenerate; boxes must be "
                                 "finite xyxy with x2 > x1 and y2 > y1")


# ---------------------------------------------------------------------- factories
#: Backbone options SSDLite asks every family for; a family whose factory refuses one
#: (TypeError naming it, e.g. MobileNetV1 has no ``tap``) is built without it.
SSDLITE_BACKBONE_OPTIONS: dict[str, Any] = {"tap": "expansion", "norm_layer": BatchNorm}


def _ssdlite_backbone(name: str, weights: str | Path | None, kwargs: Mapping[str, Any]) -> Backbone:
    kw = {**SSDLITE_BACKBONE_OPTIONS, **kwargs}
    while True:
        try:
            return create_backbone(name, weights=weights, **kw)
        except TypeError as e:
            refused = [k for k in SSDLITE_BACKBONE_OPTIONS
                       if k in kw and k not in kwargs and f"'{k}'" in str(e)]
            if not refused:
                raise
            del kw[refused[0]]


def build_ssdlite(
    backbone: str, num_classes: int = 91, *, width_mult: float = 1.0, weights: str | Path | None = None,
    weights_backbone: str | Path | None = None, backbone_kwargs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> SSDLite:
    """SSDLite on a registered backbone (see ``mobiledense.backbones.list_backbones()``).

    The backbone is built with ``tap="expansion"`` (C4 = expansion layer, §6.3) and
    BN(eps 1e-3, momentum 0.03) where its family offers them. Without
    ``weights_backbone`` its convs get torchvision's N(0, 0.03) init, as
    ``ssdlite320_mobilenet_v3_large(weights_backbone=None)`` does.

    Args:
        backbone: backbone registry name.
        num_classes: classes including background.
        width_mult: width of the backbone (passed when != 1) and of the extra layers
            (TF Object Detection API's ``depth_multiplier``; torchvision keeps extras at 1.0).
        weights: local state_dict of the whole detector (ours, or torchvision's
            ssdlite layout, converted by :func:`from_torchvision_ssdlite`).
        weights_backbone: local backbone / classifier state_dict.
        backbone_kwargs: more backbone options (``reduced_tail``, ...).
        **kwargs: :class:`SSDLite` options (``size``, ``score_thresh``, ``loss``, ...).
    """
    bkw = dict(backbone_kwargs or {})
    if width_mult != 1.0:
        bkw["width_mult"] = width_mult
    body = _ssdlite_backbone(backbone, weights_backbone, bkw)
    if weights_backbone is None:
        normal_init(body)
    model = SSDLite(body, num_classes, width_mult=width_mult, **kwargs)
    if weights is not None:
        sd = load_state_dict_file(weights)
        model.load_state_dict(from_torchvision_ssdlite(sd) if any(k.startswith("backbone.extra.") for k in sd)
                              else sd)
    return model


def ssdlite320_mobilenet_v3_large(num_classes: int = 91, reduced_tail: bool = False, width_mult: float = 1.0,
                                  **kwargs: Any) -> SSDLite:
    """Paper Table 6 "V3" (``reduced_tail=True``: "V3 dagger", torchvision's random-backbone default)."""
    backbone_kwargs = {"reduced_tail": reduced_tail, **kwargs.pop("backbone_kwargs", {})}
    return build_ssdlite("mobilenet_v3_large", num_classes, width_mult=width_mult,
                         backbone_kwargs=backbone_kwargs, **kwargs)


def ssdlite_mobilenet_v3_small(num_classes: int = 91, reduced_tail: bool = False, width_mult: float = 1.0,
                               **kwargs: Any) -> SSDLite:
    """Paper Table 6 "V3-Small" rows."""
    backbone_kwargs = {"reduced_tail": reduced_tail, **kwargs.pop("backbone_kwargs", {})}
    return build_ssdlite("mobilenet_v3_small", num_classes, width_mult=width_mult,
                         backbone_kwargs=backbone_kwargs, **kwargs)


def ssdlite_mobilenet_v2(num_classes: int = 91, width_mult: float = 1.0, **kwargs: Any) -> SSDLite:
    """MobileNetV2 + SSDLite (MobileNetV2 paper §6.2, Table 6 "V2" row of MobileNetV3)."""
    return build_ssdlite("mobilenet_v2", num_classes, width_mult=width_mult, **kwargs)


_NAMED: dict[str, Callable[..., SSDLite]] = {
    "ssdlite320_mobilenet_v3_large": ssdlite320_mobilenet_v3_large,
    "ssdlite_mobilenet_v3_large": ssdlite320_mobilenet_v3_large,
    "ssdlite_mobilenet_v3_small": ssdlite_mobilenet_v3_small,
    "ssdlite_mobilenet_v2": ssdlite_mobilenet_v2,
}


def list_detectors() -> list[str]:
    """``ssdlite320_mobilenet_v3_large`` and ``ssdlite_<backbone>`` for every registered backbone."""
    return sorted({"ssdlite320_mobilenet_v3_large"} | {f"ssdlite_{b}" for b in list_backbones()})


def get_detector_factory(name: str) -> Callable[..., SSDLite]:
    """The factory of a detector name; the KeyError lists the valid names."""
    if name not in list_detectors():
        raise KeyError(f"unknown detector {name!r}; valid names: {', '.join(list_detectors())}")
    if name in _NAMED:
        return _NAMED[name]
    backbone = name[len("ssdlite_"):]

    def factory(num_classes: int = 91, **kwargs: Any) -> SSDLite:
        return build_ssdlite(backbone, num_classes, **kwargs)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"SSDLite on the registered backbone {backbone!r} (see :func:`build_ssdlite`)."
    return factory


def create_detector(name: str, num_classes: int = 91, **kwargs: Any) -> SSDLite:
    """Build a detector by name, e.g. ``create_detector("ssdlite_mobilenet_v2", num_classes=81)``."""
    return get_detector_factory(name)(num_classes, **kwargs)


def __getattr__(name: str) -> Callable[..., SSDLite]:
    """``ssdlite_<backbone>`` factories for every registered backbone (PEP 562)."""
    if name.startswith("ssdlite_") and name in list_detectors():
        return get_detector_factory(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------- torchvision
def from_torchvision_ssdlite(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map a torchvision ``ssdlite320_mobilenet_v3_large`` state_dict onto our keys.

    torchvision splits its MobileNetV3 at C4 (``c4``, the last strided block):
    ``backbone.features.0 = features[:c4] + features[c4].block[0]`` (up to the
    expansion) and ``backbone.features.1 = features[c4].block[1:] + features[c4+1:]``.
    Ours keeps ``features`` whole and taps the expansion inside the block, so

    * ``backbone.features.0.{i}.*`` (i < c4) -> ``backbone.features.{i}.*``
    * ``backbone.features.0.{c4}.*`` -> ``backbone.features.{c4}.block.0.*``
    * ``backbone.features.1.0.{j}.*`` -> ``backbone.features.{c4}.block.{j}.*`` (a sliced
      ``nn.Sequential`` keeps its keys, so ``j`` starts at 1)
    * ``backbone.features.1.{k}.*`` (k >= 1) -> ``backbone.features.{c4+k}.*``
    * ``backbone.extra.*`` -> ``extra.*``; ``head.*`` is unchanged.

    ``c4`` is read from the keys (the last index under ``backbone.features.0``).
    """
    first = [k.split(".") for k in sd if k.startswith("backbone.features.0.")]
    if not first:
        raise ValueError("not a torchvision SSDLite state_dict: no 'backbone.features.0.*' keys")
    c4 = max(int(p[3]) for p in first)
    out = {}
    for key, value in sd.items():
        p = key.split(".")
        if key.startswith("backbone.features.0."):
            i, rest = int(p[3]), p[4:]
            new = [str(i)] + rest if i < c4 else [str(c4), "block", "0"] + rest
            key = ".".join(["backbone", "features"] + new)
        elif key.startswith("backbone.features.1."):
            k, rest = int(p[3]), p[4:]
            new = [str(c4), "block"] + rest if k == 0 else [str(c4 + k)] + rest
            key = ".".join(["backbone", "features"] + new)
        elif key.startswith("backbone.extra."):
            key = key[len("backbone."):]
        out[key] = value
    return out


class _HeadOutputs(nn.Module):
    def __init__(self, model: SSDLite) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.model.head_outputs(x)[0]


def detector_madds(model: SSDLite, size: int | tuple[int, int] | None = None) -> int:
    """Multiply-adds of backbone + extra layers + head at ``size`` (default: the model's).

    The model part only, as paper Table 6 counts it: resizing, anchor decoding,
    softmax and NMS are not included.
    """
    size = model.size if size is None else (size, size) if isinstance(size, int) else tuple(size)
    x = torch.zeros(1, 3, *size, device=model.image_mean.device)
    # The wrapper takes the model's mode: count_madds restores the wrapper's mode on its children.
    return count_madds(_HeadOutputs(model).train(model.training), x)
