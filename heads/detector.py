"""SSDLite detector: the SSD meta-architecture around any registered backbone.

Howard et al., "Searching for MobileNetV3", arXiv 1905.02244, §6.3 and Table 6:
SSDLite on C4 (the expansion layer of the last stride-16 block, ``taps={16: "expansion"}``)
and C5 (the last 1x1 conv), plus 4 extra layers, 320x320 input. As torchvision's
``SSD(backbone, anchor_generator, size, num_classes, head=...)``, :class:`SSDLite` takes
its parts (backbone, extra layers, default boxes, head: :func:`~mobiledense.heads.ssdlite.ssdlite_parts`
makes them) and owns the transform (resize + normalise), box coder, matcher, loss and
post-processing (:mod:`~mobiledense.heads.postprocess`); the head only predicts. The API
and numbers are torchvision's ``ssdlite320_mobilenet_v3_large``
(``tests/heads/test_torchvision_equivalence.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from torchvision.ops import box_iou, clip_boxes_to_image

from mobiledense.backbones import Backbone, BackboneEntry, count_madds, create_backbone, get_backbone_entry

from .anchors import DefaultBoxes
from .box_coder import BoxCoder
from .convert import ssdlite_weights
from .losses import focal_multibox_loss, multibox_loss
from .matcher import SSDMatcher
from .postprocess import select_detections
from .registry import backbone_kwargs, build_model_spec, create_model, register_head
from .spec import ModelSpec, SSDLiteSpec
from .ssdlite import (
    FOCAL_PRIOR_BIAS,
    BatchNorm,
    SSDLiteHead,
    extra_channels,
    feature_strides,
    normal_init,
    ssdlite_parts,
)

__all__ = ["SSDLite", "build_ssdlite", "build_ssdlite_model", "create_detector", "detector_madds"]

Images = Sequence[Tensor] | Tensor
Targets = Sequence[dict[str, Tensor]]


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
            (SSD's own VGG layout, conv4_3 and fc7).
        extra: the extra layers, applied in turn from the deepest feature (one level each).
        anchor_generator: :class:`DefaultBoxes` with one level per feature map.
        head: :class:`SSDLiteHead` over the same levels, channels and boxes per location.
        num_classes: classes including the background (91 for COCO as torchvision).
        size: input size, int or (h, w); images are resized to it (320 in the paper).
        image_mean / image_std: normalisation; 0.5 maps [0, 1] to [-1, 1] as torchvision.
        score_thresh / topk_candidates / nms_thresh / detections_per_img: post-processing
            (see :func:`select_detections`), torchvision's ssdlite defaults.
        iou_thresh: matcher threshold. neg_to_pos_ratio: hard-negative mining ratio (3:1).
        loss: ``"multibox"`` (softmax CE + hard negatives, the paper's) or ``"focal"``
            (sigmoid focal loss; scores then use sigmoid; build the head with
            ``cls_bias=FOCAL_PRIOR_BIAS``). focal_alpha / focal_gamma: its parameters.

    Use :func:`build_ssdlite` (or :func:`create_detector`) to build one from a registry name.
    """

    def __init__(
        self, backbone: Backbone, extra: nn.ModuleList, anchor_generator: DefaultBoxes, head: SSDLiteHead,
        num_classes: int, size: int | tuple[int, int] = 320, *,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5), image_std: Sequence[float] = (0.5, 0.5, 0.5),
        score_thresh: float = 0.001, nms_thresh: float = 0.55, detections_per_img: int = 300,
        topk_candidates: int = 300, iou_thresh: float = 0.5, neg_to_pos_ratio: float = 3.0,
        loss: Literal["multibox", "focal"] = "multibox", focal_alpha: float = 0.25, focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
        if loss not in ("multibox", "focal"):
            raise ValueError(f"loss must be 'multibox' or 'focal', got {loss!r}")
        self.strides = feature_strides(backbone)
        _check_parts(backbone, self.strides, extra, anchor_generator, head, num_classes)
        self.backbone, self.extra, self.anchor_generator, self.head = backbone, extra, anchor_generator, head
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


def _check_parts(backbone: Backbone, strides: tuple[int, int], extra: nn.ModuleList,
                 anchors: DefaultBoxes, head: SSDLiteHead, num_classes: int) -> None:
    """The head and default boxes must cover exactly the feature maps: same levels, channels, boxes."""
    in_channels = [backbone.channels[s] for s in strides] + extra_channels(extra)
    if anchors.num_levels != len(in_channels):
        raise ValueError(f"anchor_generator has {anchors.num_levels} levels but there are {len(in_channels)} "
                         f"feature maps (2 backbone levels + {len(extra)} extra layers)")
    if head.num_anchors != anchors.num_anchors_per_location():
        raise ValueError(f"head predicts {head.num_anchors} boxes per location but anchor_generator has "
                         f"{anchors.num_anchors_per_location()}")
    if head.in_channels != in_channels:
        raise ValueError(f"head expects {head.in_channels} channels but the feature maps have {in_channels}")
    if head.num_classes != num_classes:
        raise ValueError(f"head predicts {head.num_classes} classes but num_classes={num_classes}")


# ---------------------------------------------------------------------- factories
def _ssdlite_defaults(spec: ModelSpec, entry: BackboneEntry) -> tuple[int, dict[int, str]]:
    """Undilated, C4 = the expansion of the block that reaches the deepest stride (§6.3), where declared."""
    native = max(entry.output_strides)
    return native, ({native // 2: "expansion"} if "expansion" in entry.taps else {})


@register_head("ssdlite", task="det", spec=SSDLiteSpec, backbone_defaults=_ssdlite_defaults, convert=ssdlite_weights)
def build_ssdlite_model(spec: ModelSpec, weights_backbone: str | Path | None = None) -> SSDLite:
    """SSDLite of a resolved spec (use :func:`~mobiledense.heads.create_model`, which resolves it).

    The backbone gets BN(eps 1e-3, momentum 0.03) where its family takes ``norm_layer``, as
    torchvision's ssdlite; without ``weights_backbone`` its convs get torchvision's N(0, 0.03)
    init, as ``ssdlite320_mobilenet_v3_large(weights_backbone=None)`` does. The extra layers
    follow the backbone's width (TF Object Detection API's ``depth_multiplier``).
    """
    h, b = spec.head, spec.backbone
    kwargs = backbone_kwargs(b)
    if "norm_layer" in get_backbone_entry(b.name).options:
        kwargs["norm_layer"] = BatchNorm
    body = create_backbone(b.name, weights=weights_backbone, **kwargs)
    if weights_backbone is None:
        normal_init(body)
    parts = ssdlite_parts(body, spec.num_classes, width_mult=b.width_mult, min_depth=h.min_depth,
                          min_ratio=h.min_ratio, max_ratio=h.max_ratio,
                          reduce_boxes_in_lowest_layer=h.reduce_boxes_in_lowest_layer,
                          cls_bias=FOCAL_PRIOR_BIAS if h.loss == "focal" else 0.0)
    return SSDLite(body, *parts, spec.num_classes, h.size, image_mean=h.image_mean, image_std=h.image_std,
                   score_thresh=h.score_thresh, nms_thresh=h.nms_thresh, detections_per_img=h.detections_per_img,
                   topk_candidates=h.topk_candidates, iou_thresh=h.iou_thresh, neg_to_pos_ratio=h.neg_to_pos_ratio,
                   loss=h.loss, focal_alpha=h.focal_alpha, focal_gamma=h.focal_gamma)


def build_ssdlite(backbone: str, num_classes: int = 91, *, weights: str | Path | None = None,
                  weights_backbone: str | Path | None = None, **options: Any) -> SSDLite:
    """SSDLite on a registered backbone, e.g. ``build_ssdlite("mobilenet_v2", 81, size=512)``.

    ``options`` are spec options (:func:`~mobiledense.heads.build_model_spec`): backbone ones
    (``width_mult``, ``reduced_tail`` ...) and :class:`~mobiledense.heads.spec.SSDLiteSpec`
    fields (``size``, ``loss``, ``score_thresh`` ...).
    """
    spec = build_model_spec("det", "ssdlite", backbone, num_classes, **options)
    return create_model(spec, weights=weights, weights_backbone=weights_backbone)


def create_detector(name: str, num_classes: int = 91, **kwargs: Any) -> SSDLite:
    """Build a registered detector, e.g. ``create_detector("ssdlite_mobilenet_v2", num_classes=81)``."""
    return create_model(name, task="det", num_classes=num_classes, **kwargs)


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
