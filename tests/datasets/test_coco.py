"""CocoDetection on the real COCO val2017 subset, json validation, loader helpers."""

from __future__ import annotations

import copy
import json
import pickle
import warnings
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from mobiledense.datasets import (
    CocoDetection,
    CocoFormatError,
    DegenerateBoxWarning,
    ImageReadError,
    build_det_transforms,
    collate_detection,
    make_det_loader,
)

EMPTY_IMAGES = (226111, 58636)  # the two val2017 images of the subset without annotations


@pytest.fixture(scope="module")
def val(coco_dir: Path) -> CocoDetection:
    return CocoDetection(coco_dir / "images" / "val2017", coco_dir / "annotations" / "instances_val2017.json")


def test_loads_all_images_with_pycocotools_targets(val: CocoDetection) -> None:
    coco = val.coco
    assert len(val) == 50 and val.image_ids == sorted(coco.imgs)
    assert val.num_classes == 81 and len(val.category_names) == 80
    for i in range(len(val)):
        image, target = val[i]
        info = coco.imgs[target["image_id"]]
        assert target["image_id"] == val.image_ids[i]
        assert image.dtype == torch.float32 and image.shape == (3, info["height"], info["width"])
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert target["orig_size"] == (info["height"], info["width"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=info["id"], iscrowd=False))
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (len(anns), 4)
        assert target["labels"].dtype == torch.int64
        # contiguous labels map back to exactly the annotated category ids
        back = Counter(val.label_to_category_id[int(l)] for l in target["labels"])
        assert back == Counter(a["category_id"] for a in anns)
        expected = sorted([a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns)
        np.testing.assert_allclose(sorted(target["boxes"].tolist()), expected, rtol=0, atol=1e-3)


def test_crowd_excluded_count_matches_pycocotools(val: CocoDetection, coco_dir: Path) -> None:
    n_crowd = len(val.coco.getAnnIds(iscrowd=True))
    n_all = len(val.coco.getAnnIds())
    assert n_crowd == 5 and val.num_crowd_skipped == n_crowd
    assert val.box_stats == {"kept": n_all - n_crowd, "clipped": 0, "dropped": 0, "crowd_skipped": n_crowd}
    assert sum(len(val.raw_target(i)["boxes"]) for i in range(len(val))) == n_all - n_crowd
    with_crowd = CocoDetection(val.root, val.ann_file, skip_crowd=False)
    assert sum(int(with_crowd[i][1]["iscrowd"].sum()) for i in range(len(val))) == n_crowd
    assert with_crowd.box_stats["kept"] == n_all


def test_contiguous_mapping_round_trip(val: CocoDetection) -> None:
    cat_ids = sorted(val.coco.cats)
    assert list(val.label_to_category_id) == list(range(1, 81))
    assert [val.label_to_category_id[l] for l in range(1, 81)] == cat_ids  # order preserving
    for label, cat_id in val.label_to_category_id.items():
        assert val.category_id_to_label[cat_id] == label
        assert val.category_names[label] == val.coco.cats[cat_id]["name"]
    assert val.category_names[1] == "person" and val.label_to_category_id[80] == 90


def test_category_id_mapping(val: CocoDetection) -> None:
    raw = CocoDetection(val.root, val.ann_file, label_mapping="category_id")
    assert raw.num_classes == 91 and raw.label_to_category_id[90] == 90
    for i in (0, 7, 20):
        cats = [val.label_to_category_id[int(l)] for l in val.raw_target(i)["labels"]]
        assert raw.raw_target(i)["labels"].tolist() == cats
    with pytest.raises(ValueError, match="label_mapping"):
        CocoDetection(val.root, val.ann_file, label_mapping="bogus")


@pytest.mark.parametrize("preset", [None, "ssd", "ssdlite"])
def test_images_without_annotations_give_empty_targets(val: CocoDetection, preset: str | None) -> None:
    if preset is not None:
        val = copy.copy(val)
        val.transforms = build_det_transforms(preset, 320, train=True)
    for image_id in EMPTY_IMAGES:
        image, target = val[val.image_ids.index(image_id)]
        assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
        assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
        assert image.shape[0] == 3 and (preset is None or image.shape[1:] == (320, 320))


# ---------------------------------------------------------------- validation on tmp files


def _write_dataset(root: Path, data: dict, size: tuple[int, int] = (40, 60)) -> tuple[Path, Path]:
    (root / "images").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "images" / "a.jpg"), np.full((*size, 3), 128, np.uint8))
    ann = root / "ann.json"
    ann.write_text(json.dumps(data))
    return root / "images", ann


def _valid() -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 60, "height": 40}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [5, 5, 20, 10], "iscrowd": 0, "area": 200}],
        "categories": [{"id": 3, "name": "thing"}],
    }


def _edit(fn):
    data = _valid()
    fn(data)
    return data


BAD_JSONS = {
    "no images": (lambda d: d.pop("images"), r"top level.*missing required field\(s\) \['images'\]"),
    "no bbox": (lambda d: d["annotations"][0].pop("bbox"), r"annotations\[0\].*missing.*'bbox'"),
    "nan bbox": (lambda d: d["annotations"][0].update(bbox=[1, float("nan"), 2, 3]), r"annotations\[0\].*'bbox'"),
    "inf bbox": (lambda d: d["annotations"][0].update(bbox=[1, 2, float("inf"), 3]), r"'bbox'.*finite"),
    "short bbox": (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"'bbox' must be 4"),
    "unknown category": (lambda d: d["annotations"][0].update(category_id=7), r"'category_id' 7 is not in"),
    "unknown image": (lambda d: d["annotations"][0].update(image_id=9), r"'image_id' 9 is not in"),
    "dup image id": (lambda d: d["images"].append(dict(d["images"][0], file_name="b.jpg")), r"images: duplicate id"),
    "dup ann id": (lambda d: d["annotations"].append(dict(d["annotations"][0])), r"annotations: duplicate id"),
    "dup category id": (lambda d: d["categories"].append({"id": 3, "name": "x"}), r"categories: duplicate id"),
    "parent file_name": (lambda d: d["images"][0].update(file_name="../a.jpg"), r"'file_name' '\.\./a\.jpg' escapes"),
    "nested parent": (lambda d: d["images"][0].update(file_name="x/../../a.jpg"), r"escapes the image root"),
    "absolute file_name": (lambda d: d["images"][0].update(file_name="/etc/a.jpg"), r"escapes the image root"),
    "bad width": (lambda d: d["images"][0].update(width=0), r"'width' must be a positive integer"),
    "nan height": (lambda d: d["images"][0].update(height=float("nan")), r"'height' must be a positive integer"),
    "string id": (lambda d: d["annotations"][0].update(id="1"), r"'id' must be an integer"),
    "bad iscrowd": (lambda d: d["annotations"][0].update(iscrowd=2), r"'iscrowd' must be 0 or 1"),
    "no category name": (lambda d: d["categories"][0].pop("name"), r"categories\[0\].*'name'"),
}


@pytest.mark.parametrize("case", list(BAD_JSONS))
def test_bad_json_raises_naming_file_and_field(tmp_path: Path, case: str) -> None:
    mutate, pattern = BAD_JSONS[case]
    images, ann = _write_dataset(tmp_path, _edit(mutate))
    with pytest.raises(CocoFormatError, match=pattern) as info:
        CocoDetection(images, ann)
    assert str(ann) in str(info.value)


def test_not_json_and_missing_files(tmp_path: Path) -> None:
    images, ann = _write_dataset(tmp_path, _valid())
    ann.write_text("{not json")
    with pytest.raises(CocoFormatError, match="not valid JSON"):
        CocoDetection(images, ann)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        CocoDetection(images, tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        CocoDetection(tmp_path / "no_such_dir", ann)


def test_missing_area_and_iscrowd_are_filled(tmp_path: Path) -> None:
    data = _valid()
    del data["annotations"][0]["area"], data["annotations"][0]["iscrowd"]
    ds = CocoDetection(*_write_dataset(tmp_path, data))
    ann = ds.coco.anns[1]
    assert ann["area"] == 200.0 and ann["iscrowd"] == 0 and len(ds.raw_target(0)["boxes"]) == 1


def test_degenerate_boxes_clipped_or_dropped_with_one_warning(tmp_path: Path) -> None:
    data = _valid()
    boxes = {
        2: [-10, -5, 30, 20],  # partly outside: clipped to [0, 0, 20, 15]
        3: [10, 10, 0, 5],  # zero width: dropped
        4: [10, 10, -4, 5],  # negative width: dropped
        5: [100, 10, 5, 5],  # right of the 60-px image: dropped
        6: [58, 10, 0.4, 5],  # 0.4 px wide: under min_box_size
    }
    for ann_id, bbox in boxes.items():
        data["annotations"].append({"id": ann_id, "image_id": 1, "category_id": 3, "bbox": bbox})
    images, ann = _write_dataset(tmp_path, data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(images, ann)
    degenerate = [w for w in caught if issubclass(w.category, DegenerateBoxWarning)]
    assert len(degenerate) == 1, [str(w.message) for w in caught]
    message = str(degenerate[0].message)
    assert str(ann) in message and "1 box(es)" in message and "4 box(es)" in message
    assert ds.box_stats == {"kept": 2, "clipped": 1, "dropped": 4, "crowd_skipped": 0}
    np.testing.assert_allclose(ds.raw_target(0)["boxes"], [[5, 5, 25, 15], [0, 0, 20, 15]])
    assert len(ds.coco.anns) == 6  # the COCO object (used for evaluation) is untouched


def _broken(kind: str, images: Path) -> None:
    path = images / "a.jpg"
    if kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:-40])
    elif kind == "missing":
        path.unlink()


@pytest.mark.parametrize("kind,error,pattern", [
    ("zero-byte", ImageReadError, "empty"),
    ("truncated", ImageReadError, "truncated"),
    ("missing", FileNotFoundError, "not found"),
])
def test_broken_image_files(tmp_path: Path, kind: str, error: type, pattern: str) -> None:
    images, ann = _write_dataset(tmp_path, _valid())
    _broken(kind, images)
    ds = CocoDetection(images, ann)
    with pytest.raises(error, match=f"{pattern}.*a.jpg"):
        ds[0]


def test_image_size_mismatch(tmp_path: Path) -> None:
    images, ann = _write_dataset(tmp_path, _valid(), size=(60, 40))  # stored 40x60 WxH, json says 60x40
    ds = CocoDetection(images, ann)
    with pytest.raises(CocoFormatError, match=r"a\.jpg: image is 40x60 \(WxH\) but .*ann.json says 60x40"):
        ds[0]


# ---------------------------------------------------------------- loader helpers


def test_collate_detection() -> None:
    batch = [(torch.zeros(3, 4, 5), {"image_id": 1}), (torch.zeros(3, 6, 7), {"image_id": 2})]
    images, targets = collate_detection(batch)
    assert [im.shape[1:] for im in images] == [(4, 5), (6, 7)] and [t["image_id"] for t in targets] == [1, 2]


def test_dataset_pickles_for_workers(val: CocoDetection) -> None:
    ds = copy.copy(val)
    ds.transforms = build_det_transforms("ssd", 96, train=True)
    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone) == len(ds) and clone.label_to_category_id == ds.label_to_category_id
    np.testing.assert_array_equal(clone.raw_target(5)["boxes"], ds.raw_target(5)["boxes"])
    image, target = clone[5]
    assert image.shape == (3, 96, 96) and target["image_id"] == ds.image_ids[5]


def test_seeded_loader_order_and_batches(val: CocoDetection) -> None:
    def order(seed: int) -> list[int]:
        loader = make_det_loader(val, batch_size=8, train=True, workers=0, seed=seed)
        return [t["image_id"] for _, targets in loader for t in targets]

    first = order(3)
    assert len(first) == 48  # drop_last for training: 50 // 8 full batches
    assert first == order(3) and first != order(4)
    eval_loader = make_det_loader(val, batch_size=8, train=False)
    ids = [t["image_id"] for _, targets in eval_loader for t in targets]
    assert ids == val.image_ids


class _Repeat(Dataset):
    """The same sample many times: any difference comes from the augmentation streams."""

    def __init__(self, base: CocoDetection, index: int, n: int) -> None:
        self.base, self.index, self.n = base, index, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.base[self.index]


def test_workers_and_epochs_draw_different_augmentations(val: CocoDetection) -> None:
    ds = copy.copy(val)
    ds.transforms = build_det_transforms("ssd", 64, train=True)
    loader = make_det_loader(_Repeat(ds, 0, 8), batch_size=2, train=False, workers=2, seed=0)
    epochs = [[img for images, _ in loader for img in images] for _ in range(2)]
    per_worker = [epochs[0][0], epochs[0][2]]  # batches 0 and 1 come from workers 0 and 1
    assert not torch.equal(per_worker[0], per_worker[1])
    assert not torch.equal(epochs[0][0], epochs[1][0])


def test_distributed_sampler(val: CocoDetection) -> None:
    def ids(rank: int, epoch: int) -> list[int]:
        loader = make_det_loader(val, batch_size=4, train=True, distributed=True, seed=1, rank=rank, world_size=2)
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
        loader.sampler.set_epoch(epoch)
        return [t["image_id"] for _, ts in loader for t in ts]

    r0, r1 = ids(0, 0), ids(1, 0)
    assert len(r0) == len(r1) == 24 and not set(r0) & set(r1)  # 25 per rank, drop_last batches of 4
    assert r0 == ids(0, 0) and r0 != ids(0, 1)
