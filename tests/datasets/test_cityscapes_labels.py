"""The Cityscapes label table and lookups, checked against cityscapesScripts and the real data."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from mobiledense.datasets import cityscapes_labels as cl


def test_table_equals_cityscapesscripts():
    ref = pytest.importorskip("cityscapesscripts.helpers.labels")
    assert [tuple(lab) for lab in cl.LABELS] == [tuple(lab) for lab in ref.labels]
    for lab in ref.labels:
        if lab.id >= 0:
            assert cl.LABEL_ID_TO_TRAIN_ID[lab.id] == (255 if lab.trainId in (-1, 255) else lab.trainId)
    for train_id in range(cl.NUM_CLASSES):
        assert cl.TRAIN_ID_TO_LABEL_ID[train_id] == ref.trainId2label[train_id].id
        assert cl.CLASS_NAMES[train_id] == ref.trainId2label[train_id].name
        assert tuple(cl.TRAIN_ID_COLORS[train_id]) == ref.trainId2label[train_id].color
    assert cl.TRAIN_ID_TO_LABEL_ID[255] == ref.trainId2label[255].id == 0
    evaluated = {c for c, labs in ref.category2labels.items() if any(not lab.ignoreInEval for lab in labs)}
    assert set(cl.CATEGORIES) == evaluated and list(cl.CATEGORIES) == [c for c in ref.category2labels if c in evaluated]
    for cat, ids in cl.CATEGORY_TRAIN_IDS.items():
        assert {cl.CLASS_NAMES[i] for i in ids} == {
            lab.name for lab in ref.category2labels[cat] if not lab.ignoreInEval}


def test_lookup_tables():
    assert cl.NUM_CLASSES == 19 and len(cl.CLASS_NAMES) == 19 and cl.TRAIN_ID_COLORS.shape == (19, 3)
    assert cl.LABEL_ID_TO_TRAIN_ID.shape == (256,) and cl.LABEL_ID_TO_TRAIN_ID.dtype == np.uint8
    train_ids = cl.LABEL_ID_TO_TRAIN_ID[cl.TRAIN_ID_TO_LABEL_ID[np.arange(19)]]
    np.testing.assert_array_equal(train_ids, np.arange(19))  # round trip
    assert (cl.LABEL_ID_TO_TRAIN_ID[34:] == 255).all()
    assert cl.LABEL_ID_TO_TRAIN_ID[[0, 4, 9, 29, 30]].tolist() == [255] * 5
    assert sorted(sum(cl.CATEGORY_TRAIN_IDS.values(), ())) == list(range(19))
    np.testing.assert_array_equal(cl.train_ids_to_label_ids(np.array([[0, 18, 255]])), [[7, 33, 0]])
    rgb = cl.colorize_train_ids(np.array([[0, 255]], dtype=np.uint8))
    assert rgb.tolist() == [[[128, 64, 128], [0, 0, 0]]]


def test_matches_shipped_label_train_ids(cityscapes_dir: Path):
    """SOURCES.md derived labelTrainIds with the standard mapping: ours must reproduce them exactly."""
    for label_path in sorted((cityscapes_dir / "gtFine" / "val" / "frankfurt").glob("*_labelIds.png"))[:2]:
        label_ids = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
        train_path = Path(str(label_path).replace("_labelIds", "_labelTrainIds"))
        expected = cv2.imread(str(train_path), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(cl.label_ids_to_train_ids(label_ids, str(label_path)), expected)


def test_unknown_ids_raise_with_source():
    with pytest.raises(ValueError, match=r"pred.png: label ids \[34, 255\]"):
        cl.label_ids_to_train_ids(np.array([7, 34, 255], np.uint8), "pred.png")
    with pytest.raises(ValueError, match=r"label ids \[-1\]"):
        cl.label_ids_to_train_ids(np.array([-1, 7]))
    with pytest.raises(ValueError, match="integer"):
        cl.label_ids_to_train_ids(np.array([7.0]))
