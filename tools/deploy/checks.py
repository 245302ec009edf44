"""Agreement checks between two implementations: detections as sets, tensors, ONNX graphs vs PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .onnx import DetectorGraph, is_detector
from .runtime import OnnxDetector, ort_session

__all__ = ["compare_detections", "compare_tensors", "compare_with_pytorch"]


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
        got = torch.from_numpy(ort_session(path, threads).run(None, {"images": images.cpu().numpy()})[0])
        return {"logits": (got - expected).abs().max().item(), "logits_scale": expected.abs().max().item()}

