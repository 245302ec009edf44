"""The official Cityscapes label table and the lookups derived from it.

Cordts et al., "The Cityscapes Dataset for Semantic Urban Scene Understanding",
CVPR 2016, Table 1 / §3; the rows are copied from cityscapesScripts'
``helpers/labels.py`` (a test checks them against it).

* ``id`` is what ground-truth ``*_gtFine_labelIds.png`` files and official
  submissions hold (0..33); license plate has id -1 and never appears in a PNG.
* ``trainId`` is the 19-class training encoding (0..18); every other label maps
  to 255, the ignore value of losses and metrics.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "Label",
    "LABELS",
    "NUM_CLASSES",
    "IGNORE_INDEX",
    "CLASS_NAMES",
    "CATEGORIES",
    "CATEGORY_TRAIN_IDS",
    "LABEL_ID_TO_TRAIN_ID",
    "TRAIN_ID_TO_LABEL_ID",
    "TRAIN_ID_COLORS",
    "VALID_LABEL_IDS",
    "label_ids_to_train_ids",
    "train_ids_to_label_ids",
    "colorize_train_ids",
]


class Label(NamedTuple):
    """One row of the Cityscapes label table (fields as in cityscapesScripts)."""

    name: str
    id: int
    train_id: int
    category: str
    category_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]


# fmt: off
LABELS: tuple[Label, ...] = (
    #      name                    id  trainId  category        catId  instances  ignore  color
    Label("unlabeled",              0,  255,   "void",          0,     False,     True,   (  0,   0,   0)),
    Label("ego vehicle",            1,  255,   "void",          0,     False,     True,   (  0,   0,   0)),
    Label("rectification border",   2,  255,   "void",          0,     False,     True,   (  0,   0,   0)),
    Label("out of roi",             3,  255,   "void",          0,     False,     True,   (  0,   0,   0)),
    Label("static",                 4,  255,   "void",          0,     False,     True,   (  0,   0,   0)),
    Label("dynamic",                5,  255,   "void",          0,     False,     True,   (111,  74,   0)),
    Label("ground",                 6,  255,   "void",          0,     False,     True,   ( 81,   0,  81)),
    Label("road",                   7,    0,   "flat",          1,     False,     False,  (128,  64, 128)),
    Label("sidewalk",               8,    1,   "flat",          1,     False,     False,  (244,  35, 232)),
    Label("parking",                9,  255,   "flat",          1,     False,     True,   (250, 170, 160)),
    Label("rail track",            10,  255,   "flat",          1,     False,     True,   (230, 150, 140)),
    Label("building",              11,    2,   "construction",  2,     False,     False,  ( 70,  70,  70)),
    Label("wall",                  12,    3,   "construction",  2,     False,     False,  (102, 102, 156)),
    Label("fence",                 13,    4,   "construction",  2,     False,     False,  (190, 153, 153)),
    Label("guard rail",            14,  255,   "construction",  2,     False,     True,   (180, 165, 180)),
    Label("bridge",                15,  255,   "construction",  2,     False,     True,   (150, 100, 100)),
    Label("tunnel",                16,  255,   "construction",  2,     False,     True,   (150, 120,  90)),
    Label("pole",                  17,    5,   "object",        3,     False,     False,  (153, 153, 153)),
    Label("polegroup",             18,  255,   "object",        3,     False,     True,   (153, 153, 153)),
    Label("traffic light",         19,    6,   "object",        3,     False,     False,  (250, 170,  30)),
    Label("traffic sign",          20,    7,   "object",        3,     False,     False,  (220, 220,   0)),
    Label("vegetation",            21,    8,   "nature",        4,     False,     False,  (107, 142,  35)),
    Label("terrain",               22,    9,   "nature",        4,     False,     False,  (152, 251, 152)),
    Label("sky",                   23,   10,   "sky",           5,     False,     False,  ( 70, 130, 180)),
    Label("person",                24,   11,   "human",         6,     True,      False,  (220,  20,  60)),
    Label("rider",                 25,   12,   "human",         6,     True,      False,  (255,   0,   0)),
    Label("car",                   26,   13,   "vehicle",       7,     True,      False,  (  0,   0, 142)),
    Label("truck",                 27,   14,   "vehicle",       7,     True,      False,  (  0,   0,  70)),
    Label("bus",                   28,   15,   "vehicle",       7,     True,      False,  (  0,  60, 100)),
    Label("caravan",               29,  255,   "vehicle",       7,     True,      True,   (  0,   0,  90)),
    Label("trailer",               30,  255,   "vehicle",       7,     True,      True,   (  0,   0, 110)),
    Label("train",                 31,   16,   "vehicle",       7,     True,      False,  (  0,  80, 100)),
    Label("motorcycle",            32,   17,   "vehicle",       7,     True,      False,  (  0,   0, 230)),
    Label("bicycle",               33,   18,   "vehicle",       7,     True,      False,  (119,  11,  32)),
    Label("license plate",         -1,   -1,   "vehicle",       7,     False,     True,   (  0,   0, 142)),
)
# fmt: on

IGNORE_INDEX = 255
_EVAL = sorted((lab for lab in LABELS if not lab.ignore_in_eval), key=lambda lab: lab.train_id)
NUM_CLASSES = len(_EVAL)  # 19
#: Names of the 19 evaluated classes, indexed by trainId.
CLASS_NAMES: tuple[str, ...] = tuple(lab.name for lab in _EVAL)
#: Label ids that may appear in a labelIds PNG (ground truth or submission).
VALID_LABEL_IDS: tuple[int, ...] = tuple(lab.id for lab in LABELS if lab.id >= 0)

#: The 7 evaluated categories in cityscapesScripts' order ("void" has no evaluated label).
CATEGORIES: tuple[str, ...] = tuple(dict.fromkeys(lab.category for lab in _EVAL))
#: Category name -> trainIds of its evaluated labels (category IoU sums over them).
CATEGORY_TRAIN_IDS: dict[str, tuple[int, ...]] = {
    cat: tuple(lab.train_id for lab in _EVAL if lab.category == cat) for cat in CATEGORIES
}

#: uint8 lookup table, index with a labelIds array: 255 for ignored and unknown ids.
LABEL_ID_TO_TRAIN_ID = np.full(256, IGNORE_INDEX, dtype=np.uint8)
#: uint8 lookup table, index with a trainIds array: trainIds 0..18 -> label id;
#: every other value (255 included) -> 0 ("unlabeled"), as cityscapesScripts' trainId2label does.
TRAIN_ID_TO_LABEL_ID = np.zeros(256, dtype=np.uint8)
for _lab in _EVAL:
    LABEL_ID_TO_TRAIN_ID[_lab.id] = _lab.train_id
    TRAIN_ID_TO_LABEL_ID[_lab.train_id] = _lab.id
#: (19, 3) uint8 RGB palette indexed by trainId.
TRAIN_ID_COLORS = np.array([lab.color for lab in _EVAL], dtype=np.uint8)
_VALID_ID_MASK = np.zeros(256, dtype=bool)
_VALID_ID_MASK[list(VALID_LABEL_IDS)] = True


def label_ids_to_train_ids(label_ids: np.ndarray, source: str = "label map") -> np.ndarray:
    """Map a labelIds array to trainIds (uint8, 255 = ignore).

    Raises:
        ValueError: naming ``source`` when the array holds ids outside the table.
    """
    arr = np.asarray(label_ids)
    if arr.dtype.kind not in "ui":
        raise ValueError(f"{source}: expected an integer labelIds array, got dtype {arr.dtype}")
    bad = (arr < 0) | (arr > 255)
    if not bad.any():
        bad = ~_VALID_ID_MASK[arr]
    if bad.any():
        unknown = np.unique(arr[bad])[:10].tolist()
        raise ValueError(
            f"{source}: label ids {unknown} are not in the Cityscapes label table "
            f"(valid ids are 0..33); is this a labelTrainIds or colour image instead of labelIds?"
        )
    return LABEL_ID_TO_TRAIN_ID[arr]


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Map trainIds (0..18, anything else -> 0 'unlabeled') to labelIds for submission."""
    arr = np.asarray(train_ids)
    if arr.dtype.kind not in "ui":
        raise ValueError(f"expected an integer trainIds array, got dtype {arr.dtype}")
    return TRAIN_ID_TO_LABEL_ID[np.where((arr >= 0) & (arr < 256), arr, IGNORE_INDEX)]


def colorize_train_ids(train_ids: np.ndarray) -> np.ndarray:
    """(H, W) trainIds -> (H, W, 3) uint8 RGB with the official colours; ignore is black."""
    arr = np.asarray(train_ids)
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:NUM_CLASSES] = TRAIN_ID_COLORS
    return palette[np.where((arr >= 0) & (arr < 256), arr, IGNORE_INDEX)]
