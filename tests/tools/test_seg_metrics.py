"""Segmentation metrics against cityscapesScripts' own evaluator on real gtFine frames."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mobiledense.datasets.cityscapes_labels import CATEGORIES, CLASS_NAMES, LABEL_ID_TO_TRAIN_ID, LABELS
from mobiledense.tools.evaluation.cityscapes import SegConfusion, evaluate_label_pngs, metrics_from_confusion

EVAL_IDS = [lab.id for lab in LABELS if not lab.ignore_in_eval]
BUS = 28  # absent from the chosen frames and never predicted: its IoU must be NaN
TRUCK = 27  # absent from the chosen frames but predicted: IoU 0
SMALL = [("val/frankfurt", "frankfurt_000000_000576"), ("val/frankfurt", "frankfurt_000000_003357"),
         ("train/aachen", "aachen_000000_000019")]
FULL = ("val/frankfurt", "frankfurt_000000_001236")


def _perturb(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible bad prediction in label ids: wrong rectangles, ignored labels, shifts, erosion."""
    pred = gt.copy()
    h, w = gt.shape
    choices = [i for i in EVAL_IDS if i != BUS] + [0, 4, 9, 14, 30]  # 0/4/9/14/30 are ignored labels
    for _ in range(12):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        pred[y:y + rng.integers(4, h // 4), x:x + rng.integers(4, w // 4)] = rng.choice(choices)
    y, x, s = h // 3, w // 3, max(2, w // 100)
    pred[y:2 * y, x:2 * x] = np.roll(gt[y:2 * y, x:2 * x], (s, -s), axis=(0, 1))  # shifted region
    for label_id, fill in ((26, 0), (21, 7), (11, 4)):  # car/vegetation/building eroded into void/road/static
        mask = (gt == label_id).astype(np.uint8)
        lost = (mask - cv2.erode(mask, np.ones((5, 5), np.uint8))).astype(bool)
        pred[lost] = fill
    pred[rng.random(gt.shape) < 0.01] = 4  # salt of an ignored label
    return pred


@pytest.fixture(scope="module")
def png_pairs(cityscapes_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Real GT (3 frames downscaled to 512x256 + 1 full-res frame) and perturbed labelId predictions."""
    out = tmp_path_factory.mktemp("cs_eval")
    rng = np.random.default_rng(0)
    gts, preds = [], []
    for split_city, frame in SMALL + [FULL]:
        src = cityscapes_dir / "gtFine" / split_city / f"{frame}_gtFine_labelIds.png"
        gt = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
        if (split_city, frame) != FULL:  # downscaled with its instanceIds (16 bit) beside it
            inst = cv2.imread(str(src).replace("labelIds", "instanceIds"), cv2.IMREAD_UNCHANGED)
            gt = cv2.resize(gt, (512, 256), interpolation=cv2.INTER_NEAREST)
            src = out / f"{frame}_gtFine_labelIds.png"
            cv2.imwrite(str(src), gt)
            cv2.imwrite(str(src).replace("labelIds", "instanceIds"),
                        cv2.resize(inst, (512, 256), interpolation=cv2.INTER_NEAREST))
        pred_path = out / f"{frame}_pred_labelIds.png"
        cv2.imwrite(str(pred_path), _perturb(gt, rng))
        gts.append(src)
        preds.append(pred_path)
    return gts, preds


@pytest.fixture(scope="module")
def reference(png_pairs):
    """cityscapesScripts' evaluateImgLists on the same files, instance-level scores included."""
    ev = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    gts, preds = png_pairs
    args = copy.copy(ev.args)
    args.evalInstLevelScore = True
    args.evalPixelAccuracy = False
    args.quiet = True
    args.JSONOutput = False
    restore = not hasattr(np, "in1d")
    if restore:  # the installed cityscapesScripts calls np.in1d, which NumPy 2.4 removed: for this run only
        np.in1d = lambda a, b, invert=False: np.isin(np.ravel(a), b, invert=invert)
    try:
        return ev.evaluateImgLists([str(p) for p in preds], [str(g) for g in gts], args)
    finally:
        if restore:
            del np.in1d


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_matches_cityscapesscripts_exactly(png_pairs, reference):
    ours = evaluate_label_pngs(*png_pairs)
    for name, iou in zip(CLASS_NAMES, ours.iou):
        assert _same(float(iou), reference["classScores"][name]), name
    assert ours.miou == reference["averageScoreClasses"]
    for cat in CATEGORIES:
        assert ours.category_iou[cat] == reference["categoryScores"][cat], cat
    assert ours.category_miou == reference["averageScoreCategories"]
    # Our (19, 20) matrix is theirs (34x34 label ids) with ignored GT rows dropped and ignored columns summed.
    ref = np.array(reference["confMatrix"], dtype=np.int64)
    ignored = [lab.id for lab in LABELS if lab.ignore_in_eval and lab.id >= 0]
    void = ref[np.ix_(EVAL_IDS, ignored)].sum(1, keepdims=True)
    expected = np.concatenate([ref[np.ix_(EVAL_IDS, EVAL_IDS)], void], 1)
    np.testing.assert_array_equal(ours.confusion, expected)
    assert ours.pixel_acc == float(np.trace(ref[np.ix_(EVAL_IDS, EVAL_IDS)])) / ref[EVAL_IDS].sum()
    # the perturbations exercise every code path: NaN (absent), 0 (FP only), ignored predictions
    assert math.isnan(ours.iou[LABEL_ID_TO_TRAIN_ID[BUS]])
    assert ours.iou[LABEL_ID_TO_TRAIN_ID[TRUCK]] == 0.0
    assert ours.confusion[:, -1].sum() > 0
    assert 0.3 < ours.miou < 0.95


def test_iiou_matches_cityscapesscripts_exactly(png_pairs, reference):
    """Instance-level IoU on the real instanceIds (3 frames at 512x256, one at 2048x1024)."""
    ours = evaluate_label_pngs(*png_pairs)
    inst_classes = [n for n, v in reference["classInstScores"].items() if not math.isnan(v)]
    assert set(inst_classes) <= {"person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"}
    assert len(inst_classes) >= 3  # the frames have people, cars, bicycles ...
    flat = ours.as_dict()
    for name in ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"):
        assert _same(flat[f"iIoU/{name}"], reference["classInstScores"][name]), name
    assert ours.iiou == reference["averageScoreInstClasses"]
    for cat in ("human", "vehicle"):
        assert ours.category_iiou[cat] == reference["categoryInstScores"][cat], cat
    assert ours.category_miiou == reference["averageScoreInstCategories"]
    assert 0.2 < ours.iiou < ours.miou + 0.3
    none = evaluate_label_pngs(*png_pairs, instances=None)  # asked without: no iIoU, the rest unchanged
    assert none.iiou_per_class is None and "iIoU" not in none.as_dict() and none.miou == ours.miou


def test_train_id_paths_agree(png_pairs, reference, tmp_path):
    gts, preds = png_pairs
    train_gts, train_preds = [], []
    for i, (g, p) in enumerate(zip(gts, preds)):
        for src, dst_list, tag in ((g, train_gts, "gt"), (p, train_preds, "pred")):
            dst = tmp_path / f"{i}_{tag}_trainIds.png"
            cv2.imwrite(str(dst), LABEL_ID_TO_TRAIN_ID[cv2.imread(str(src), cv2.IMREAD_UNCHANGED)])
            dst_list.append(dst)
    base = evaluate_label_pngs(gts, preds, instances=None)
    for kwargs in ({"gt_files": gts, "pred_files": train_preds, "pred_ids": "train"},
                   {"gt_files": train_gts, "pred_files": train_preds, "gt_ids": "train", "pred_ids": "train"}):
        other = evaluate_label_pngs(**kwargs, instances=None)
        np.testing.assert_array_equal(other.confusion, base.confusion)
        assert other.as_dict() == pytest.approx(base.as_dict(), nan_ok=True, abs=0)
    assert base.miou == reference["averageScoreClasses"]


def test_batched_and_logit_updates_equal_per_image():
    rng = np.random.default_rng(1)
    target = torch.from_numpy(rng.integers(0, 19, (3, 32, 48)))
    target[:, :4] = 255
    pred = torch.from_numpy(rng.integers(0, 19, (3, 32, 48)))
    pred[0, 10:12] = 255  # void predictions
    one = SegConfusion()
    for p, t in zip(pred, target):
        one.update(p, t)
    batched = SegConfusion()
    batched.update(pred, target)
    torch.testing.assert_close(batched.confusion, one.confusion)
    logits = torch.nn.functional.one_hot(pred.clamp(max=18), 19).permute(0, 3, 1, 2).float()
    from_logits = SegConfusion()
    from_logits.update(logits, target)
    # argmax of logits never yields void: only the void pixels differ
    assert from_logits.confusion.sum() == one.confusion.sum()
    assert from_logits.confusion[:, -1].sum() == 0
    # hand-computed example: 2 classes
    conf = SegConfusion(num_classes=2)
    conf.update(torch.tensor([[0, 0, 1, 1, 7]]), torch.tensor([[0, 1, 1, 255, 1]]))
    m = conf.compute()
    np.testing.assert_array_equal(m.confusion, [[1, 0, 0], [1, 1, 1]])
    assert m.iou.tolist() == [0.5, 1 / 3] and m.pixel_acc == 2 / 4 and m.mean_acc == (1 + 1 / 3) / 2
    assert m.category_iou == {}


def test_absent_class_is_nan_and_excluded():
    conf = np.zeros((3, 4), dtype=np.int64)
    conf[0, 0], conf[1, 1], conf[1, 0] = 5, 3, 1
    m = metrics_from_confusion(conf)
    assert math.isnan(m.iou[2]) and m.miou == (5 / 6 + 3 / 4) / 2
    assert math.isnan(metrics_from_confusion(np.zeros((2, 3), np.int64)).miou)


def test_errors_name_the_problem(png_pairs, tmp_path):
    gts, preds = png_pairs
    with pytest.raises(FileNotFoundError, match="nope.png"):
        evaluate_label_pngs([gts[0]], [tmp_path / "nope.png"])
    small = tmp_path / "small_pred.png"
    cv2.imwrite(str(small), np.full((10, 20), 7, np.uint8))
    with pytest.raises(ValueError, match="small_pred.png.*20x10"):
        evaluate_label_pngs([gts[0]], [small])
    gt = cv2.imread(str(gts[0]), cv2.IMREAD_UNCHANGED)
    for bad_value in (255, 34):
        bad = tmp_path / f"bad{bad_value}.png"
        cv2.imwrite(str(bad), np.where(gt == 7, bad_value, gt).astype(np.uint8))
        with pytest.raises(ValueError, match=rf"bad{bad_value}.png: label ids \[{bad_value}\]"):
            evaluate_label_pngs([gts[0]], [bad])
    with pytest.raises(ValueError, match="trainIds must be"):
        evaluate_label_pngs([gts[0]], [preds[0]], pred_ids="train")  # labelIds passed as trainIds
    color = tmp_path / "color.png"
    cv2.imwrite(str(color), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="single-channel"):
        evaluate_label_pngs([color], [color])
    with pytest.raises(ValueError, match="2 ground-truth files but 1"):
        evaluate_label_pngs(gts[:2], preds[:1])
    conf = SegConfusion()
    with pytest.raises(ValueError, match=r"prediction size \(4, 4\) != target size \(4, 5\)"):
        conf.update(torch.zeros(4, 4, dtype=torch.long), torch.zeros(4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"values \[19\]"):
        conf.update(torch.zeros(4, dtype=torch.long), torch.tensor([0, 19, 255, 3]))


def _ddp_worker(rank: int, init_file: str, preds: torch.Tensor, targets: torch.Tensor, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    conf = SegConfusion()
    conf.update(preds[rank], targets[rank])
    conf.reduce()
    torch.save(conf.confusion, f"{out}.{rank}")
    dist.destroy_process_group()


def test_reduce_sums_over_ranks(tmp_path):
    rng = np.random.default_rng(2)
    preds = torch.from_numpy(rng.integers(0, 20, (2, 16, 16)))
    targets = torch.from_numpy(rng.integers(0, 19, (2, 16, 16)))
    # fork: spawned workers would re-import torch (~10 s on a loaded 2-core runner)
    torch.multiprocessing.start_processes(
        _ddp_worker, args=(str(tmp_path / "init"), preds, targets, str(tmp_path / "c")), nprocs=2,
        start_method="fork")
    single = SegConfusion()
    single.update(preds, targets)
    single.reduce()  # not initialised here: a no-op
    for rank in range(2):
        torch.testing.assert_close(torch.load(tmp_path / f"c.{rank}"), single.confusion)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_update_matches_cpu():
    rng = np.random.default_rng(3)
    pred = torch.from_numpy(rng.integers(0, 21, (2, 64, 64)))
    target = torch.from_numpy(rng.integers(0, 19, (2, 64, 64)))
    cpu, gpu = SegConfusion(), SegConfusion()
    cpu.update(pred, target)
    gpu.update(pred.cuda(), target.cuda())
    assert gpu.confusion.is_cuda
    torch.testing.assert_close(gpu.confusion.cpu(), cpu.confusion)
    assert gpu.compute().as_dict() == pytest.approx(cpu.compute().as_dict(), nan_ok=True, abs=0)
