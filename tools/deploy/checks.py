"""Agreement checks between two implementations: detections as sets, tensors, ONNX graphs vs PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .onnx import DetectorGraph, is_detector
from .runtime import OnnxDetector, OnnxModel

__all__ = ["MIN_AGREEMENT", "check_artifact", "compare_detections", "compare_tensors", "compare_with_pytorch",
           "match_detections"]


def _twin_distance(a: dict[str, Tensor], b: dict[str, Tensor], score_atol: float, box_atol: float
                   ) -> tuple[float, float]:
    """Largest (score, box) difference from each detection of ``a`` to its nearest same-label twin in ``b``."""
    ds = db = 0.0
    for label in a["labels"].unique().tolist():
        ia, ib = a["labels"] == label, b["labels"] == label
        if not ib.any():
            return float("inf"), float("inf")
        sd = (a["scores"][ia][:, None] - b["scores"][ib][None]).abs()
        bd = (a["boxes"][ia][:, None] - b["boxes"][ib][None]).abs().amax(-1)
        nearest = (sd / score_atol + bd / box_atol).argmin(1)
        rows = torch.arange(len(nearest))
        ds, db = max(ds, sd[rows, nearest].max().item()), max(db, bd[rows, nearest].max().item())
    return ds, db


def compare_detections(reference: Sequence[dict[str, Tensor]], ours: Sequence[dict[str, Tensor]],
                       score_atol: float = 1e-3, box_atol: float = 0.1) -> dict[str, Any]:
    """Same detections per image, as sets: same count per label, and every detection of each side
    has a twin of the same label on the other within ``score_atol`` / ``box_atol`` (pixels).

    Sets, not sequences: detections whose scores differ by float rounding may come in
    another order, and NMS keeps the same boxes either way.
    """
    same, ds, db, n = len(reference) == len(ours), 0.0, 0.0, 0
    for r, o in zip(reference, ours):
        r, o = ({k: v.detach().cpu() if k == "labels" else v.detach().float().cpu() for k, v in d.items()}
                for d in (r, o))
        n += len(r["scores"])
        counts_r = torch.bincount(r["labels"], minlength=1)
        counts_o = torch.bincount(o["labels"], minlength=1)
        if len(counts_r) != len(counts_o) or not torch.equal(counts_r, counts_o):
            same = False
            continue
        for a, b in ((r, o), (o, r)):
            s, bx = _twin_distance(a, b, score_atol, box_atol)
            ds, db = max(ds, s), max(db, bx)
    passed = same and ds <= score_atol and db <= box_atol
    return {"passed": passed, "same_label_counts": same, "detections": n, "max_score_diff": ds,
            "max_box_diff": db}


def compare_tensors(ref: Tensor, got: Tensor, atol: float) -> dict[str, Any]:
    diff = (ref.float() - got.float()).abs().max().item()
    scale = ref.abs().max().item()
    return {"passed": diff <= atol * max(1.0, scale), "max_abs_diff": diff, "output_scale": scale}



def compare_with_pytorch(model: nn.Module, path: str | Path, images: Tensor, threads: int | None = None
                         ) -> dict[str, float]:
    """Largest |onnxruntime - PyTorch| of every graph output on ``images`` (plus detection counts)."""
    model = model.eval()
    with torch.no_grad():
        if is_detector(model):
            expected = DetectorGraph(model)(images)
            onnx_det = OnnxDetector(path, threads)
            got = onnx_det.raw(images)
            diffs = {"boxes": (got[0] - expected[0]).abs().max().item(),
                     "scores": (got[1] - expected[1]).abs().max().item()}
            ref, out = model(images), onnx_det(images)
            diffs["detections_pytorch"] = float(sum(len(d["scores"]) for d in ref))
            diffs["detections_onnx"] = float(sum(len(d["scores"]) for d in out))
            diffs["same_detections"] = float(compare_detections(ref, out)["passed"])
            return diffs
        expected = model(images)
        got = OnnxModel(path, threads)(images.cpu())  # upsampled to input size when the graph decodes at stride
        return {"logits": (got - expected).abs().max().item(), "logits_scale": expected.abs().max().item()}



#: Export-time agreement an artifact must reach against PyTorch, per precision (fp32 keeps ``--atol``).
#: Segmenters: fraction of pixels with the same argmax. Detectors: :func:`match_detections`, the
#: smaller of the two directions' fractions of detections (score >= ``DET_SCORE_FLOOR``) that have a
#: same-label twin with IoU >= ``DET_IOU`` in the other set.
MIN_AGREEMENT = {"bf16": 0.95, "int8": 0.90}
#: fp32 boxes may differ by this many ``atol`` relative to their scale: the exp of the size
#: regression turns a logit-level rounding into a relative box error several times larger
#: (0.14 px on 128 px boxes for untrained weights; trained ones stay near 1e-4 px).
BOX_ATOL_FACTOR = 5.0
DET_IOU, DET_SCORE_FLOOR = 0.5, 0.1


def _matched(src: dict[str, Tensor], dst: dict[str, Tensor], iou: float, floor: float) -> tuple[int, int, float]:
    """(matched, total, largest score difference) of ``src``'s detections >= ``floor`` greedily in ``dst``."""
    from torchvision.ops import box_iou

    keep = src["scores"] >= floor
    boxes, scores, labels = src["boxes"][keep], src["scores"][keep], src["labels"][keep]
    if len(boxes) == 0:
        return 0, 0, 0.0
    if len(dst["boxes"]) == 0:
        return 0, len(boxes), 0.0
    ious = box_iou(boxes.float(), dst["boxes"].float())
    ious[labels[:, None] != dst["labels"][None]] = -1
    used = torch.zeros(len(dst["boxes"]), dtype=torch.bool)
    hit, ds = 0, 0.0
    for i in scores.argsort(descending=True).tolist():
        row = ious[i].masked_fill(used, -1)
        j = int(row.argmax())
        if row[j] >= iou:
            used[j], hit = True, hit + 1
            ds = max(ds, abs(float(scores[i]) - float(dst["scores"][j])))
    return hit, len(boxes), ds


def match_detections(reference: Sequence[dict[str, Tensor]], ours: Sequence[dict[str, Tensor]],
                     iou: float = DET_IOU, score_floor: float = DET_SCORE_FLOOR) -> dict[str, Any]:
    """Detections matched as sets, both ways: ``agreement`` = min over directions of matched / total.

    Each detection scoring >= ``score_floor`` needs a same-label detection (any score) with IoU >=
    ``iou`` in the other set (greedy by score, one twin each); 1.0 when neither side has any.
    """
    if len(reference) != len(ours):
        return {"agreement": 0.0, "detections": 0, "max_score_diff": float("inf")}
    fractions, n, ds = [], 0, 0.0
    for src, dst in ((reference, ours), (ours, reference)):
        hit = total = 0
        for a, b in zip(src, dst):
            a, b = ({k: v.detach().cpu() for k, v in d.items()} for d in (a, b))
            h, t, d = _matched(a, b, iou, score_floor)
            hit, total, ds = hit + h, total + t, max(ds, d)
        fractions.append(hit / total if total else 1.0)
        n = max(n, total)
    return {"agreement": min(fractions), "detections": n, "max_score_diff": ds, "iou": iou,
            "score_floor": score_floor}


def check_artifact(model: nn.Module, engine: nn.Module, images: Sequence[Tensor], precision: str,
                   min_agreement: float | None = None, atol: float = 1e-3) -> dict[str, Any]:
    """Agreement of an artifact's wrapper (an :class:`~.engines.EngineModel`) with ``model`` on ``images``.

    ``images``: (1|N, 3, H, W) batches in [0, 1]. Segmenters: ``agreement`` = fraction of pixels
    with the same argmax, ``max_abs_diff`` of the logits; detectors: :func:`match_detections`
    (``agreement``) and ``max_abs_diff`` of the graph's scores (boxes: ``max_box_diff``, pixels);
    both: ``relative_rmse``, the RMS error of the scores / logits over their standard deviation
    (meaningful on any weights, where ``agreement`` needs a trained model: random weights give
    near-ties that any rounding flips).
    fp32 must reproduce the graph outputs within ``atol`` (relative to the outputs' scale, as
    ``export`` always checked); bf16 / int8 change them, so they must reach ``min_agreement``
    (default :data:`MIN_AGREEMENT` of the precision). ``passed`` says whether it did.
    """
    need = min_agreement if min_agreement is not None else MIN_AGREEMENT.get(precision, 0.99)
    from mobiledense.heads.inference import optimize_for_inference

    # The reference is the network that was exported: BatchNorm folded (what optimize_for_inference
    # does, tested equal to the model elsewhere), so fp32 differences are the runtime's alone.
    with torch.inference_mode(False):  # it traces with hooks that read version counters
        model = optimize_for_inference(model.eval(), channels_last=False)
    detector = is_detector(model)
    graph = DetectorGraph(model).eval() if detector else model
    diff = box_diff = scale = box_scale = 0.0
    ref, got, same, total = [], [], 0, 0
    err2 = var = 0.0
    with torch.inference_mode():
        for x in images:
            # Segmenters: logits at input size on both sides (the wrapper upsamples a graph's
            # decoder-stride logits); labels from the wrapper's own boundary-only path.
            expected, raw = (graph(x), engine.raw(x)) if detector else (model(x), [engine(x)])
            expected = list(expected) if isinstance(expected, (tuple, list)) else [expected]
            scored = expected[-1]  # scores / logits
            diff = max(diff, (raw[-1] - scored).abs().max().item())
            scale = max(scale, scored.abs().max().item())
            err2 += (raw[-1] - scored).double().pow(2).sum().item()
            var += (scored.double() - scored.double().mean()).pow(2).sum().item()
            if detector:
                box_diff = max(box_diff, (raw[0] - expected[0]).abs().max().item())
                box_scale = max(box_scale, expected[0].abs().max().item())
                ref += model(x)
                got += engine(x)
            else:
                labels = engine.labels(x) if hasattr(engine, "labels") else raw[-1].argmax(1)
                same += int((scored.argmax(1) == labels).sum())
                total += scored.shape[0] * scored.shape[-2] * scored.shape[-1]
    out: dict[str, Any] = match_detections(ref, got) if detector else {"agreement": same / max(total, 1)}
    out.update({"max_abs_diff": diff, "output_scale": scale, "relative_rmse": (err2 / max(var, 1e-30)) ** 0.5,
                "precision": precision})
    if detector:
        out.update({"max_box_diff": box_diff, "box_scale": box_scale})
    if precision == "fp32":
        out.update({"atol": atol, "passed": diff <= atol * max(1.0, scale)
                    and box_diff <= BOX_ATOL_FACTOR * atol * max(1.0, box_scale)})
    else:
        out.update({"min_agreement": need, "passed": out["agreement"] >= need})
    return out
