"""Segmentation augmentation on a real (downscaled) Cityscapes frame: sizes, flips, padding, eval."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mobiledense.datasets.cityscapes import CityscapesSegmentation
from mobiledense.datasets.seg_transforms import SegTransform, build_seg_transforms, to_tensor_pair

VALID = set(range(19)) | {255}


@pytest.fixture(scope="module")
def frame(cityscapes_tiny_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The real 256x128 val frame: uint8 RGB image and uint8 trainIds (with 255 pixels)."""
    ds = CityscapesSegmentation(cityscapes_tiny_dir, "val")
    image, mask = ds.load_image(0), ds.load_label(0)
    assert image.shape == (128, 256, 3) and (mask == 255).any()
    return image, mask


def _plain(**kw) -> SegTransform:
    args = dict(crop_size=None, scale_range=(1.0, 1.0), base_size=None, hflip=False, photometric=False, seed=0)
    return build_seg_transforms(True, **{**args, **kw})


def test_train_crops_have_crop_size_and_valid_values(frame):
    t = build_seg_transforms(True, crop_size=(64, 96), base_size=(128, 256), seed=0)
    for _ in range(10):
        image, mask = t(*frame)
        assert image.shape == (3, 64, 96) and image.dtype == torch.float32
        assert mask.shape == (64, 96) and mask.dtype == torch.int64
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert set(mask.unique().tolist()) <= VALID


def test_flip_moves_image_and_mask_together(frame):
    image0, mask0 = to_tensor_pair(*frame)
    t = _plain(hflip=True)
    seen = set()
    for _ in range(12):
        image, mask = t(*frame)
        flipped = torch.equal(image, image0.flip(-1))
        assert flipped or torch.equal(image, image0)
        assert torch.equal(mask, mask0.flip(-1) if flipped else mask0)
        seen.add(flipped)
    assert seen == {True, False}  # p=0.5: both outcomes in 12 draws (fixed seed)


@pytest.mark.parametrize("factor, size", [(0.5, (64, 128)), (2.0, (256, 512))])
def test_scale_resizes_with_nearest_mask(frame, factor, size):
    image, mask = _plain(scale_range=(factor, factor))(*frame)
    assert image.shape[1:] == size and mask.shape == size
    assert set(mask.unique().tolist()) <= set(np.unique(frame[1]).tolist())  # nearest: no new values
    if factor == 2.0:  # nearest upsampling by 2 repeats each label pixel
        assert torch.equal(mask[::2, ::2], torch.from_numpy(frame[1]).long())


def test_scale_is_relative_to_base_size(frame):
    image, mask = _plain(base_size=(256, 512), scale_range=(0.75, 0.75))(*frame)
    assert image.shape[1:] == (192, 384) and mask.shape == (192, 384)


def test_padding_fills_image_zero_and_mask_ignore(frame):
    t = build_seg_transforms(True, crop_size=(100, 200), base_size=None, scale_range=(0.5, 0.5),
                             hflip=False, photometric=True, seed=0)
    image, mask = t(*frame)  # the scaled frame is 64x128, padded at bottom/right to 100x200
    assert image.shape == (3, 100, 200)
    assert (mask[64:] == 255).all() and (mask[:, 128:] == 255).all()
    assert (image[:, 64:] == 0).all() and (image[:, :, 128:] == 0).all()
    assert (mask[:64, :128] != 255).any()


def test_eval_resizes_image_only_by_default(frame):
    image, mask = build_seg_transforms(False, base_size=None, eval_scale=0.5)(*frame)
    assert image.shape == (3, 64, 128)
    assert torch.equal(mask, torch.from_numpy(frame[1]).long())  # labels stay at file resolution
    image, mask = build_seg_transforms(False, base_size=(128, 256), eval_scale=0.5, resize_mask=True)(*frame)
    assert image.shape[1:] == mask.shape == (64, 128)


def test_eval_full_resolution_is_identity(frame):
    image, mask = build_seg_transforms(False, base_size=(128, 256), eval_scale=1.0)(*frame)
    image0, mask0 = to_tensor_pair(*frame)
    assert torch.equal(image, image0) and torch.equal(mask, mask0)


def test_seed_makes_augmentation_reproducible(frame):
    a, b = (build_seg_transforms(True, crop_size=(64, 64), base_size=None, seed=3) for _ in range(2))
    for _ in range(3):
        (ia, ma), (ib, mb) = a(*frame), b(*frame)
        assert torch.equal(ia, ib) and torch.equal(ma, mb)
    torch.manual_seed(0)
    c = build_seg_transforms(True, crop_size=(64, 64), base_size=None)
    torch.manual_seed(0)
    d = build_seg_transforms(True, crop_size=(64, 64), base_size=None)
    assert torch.equal(c(*frame)[0], d(*frame)[0])


class _Repeat(torch.utils.data.Dataset):
    def __init__(self, frame, transform):
        self.frame, self.transform = frame, transform

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i):
        return self.transform(*self.frame)


def test_dataloader_workers_draw_different_augmentations(frame):
    # Forked workers inherit albumentations' RNG; SegTransform reseeds each from its worker seed.
    t = build_seg_transforms(True, crop_size=(32, 32), base_size=None, scale_range=(1.0, 1.0), seed=0)
    loader = torch.utils.data.DataLoader(_Repeat(frame, t), batch_size=1, num_workers=2,
                                         multiprocessing_context="fork")
    crops = [img for img, _ in loader]  # worker 0 serves items 0, 2; worker 1 items 1, 3
    assert not torch.equal(crops[0], crops[1]) and not torch.equal(crops[2], crops[3])


@pytest.mark.parametrize("kwargs, match", [
    (dict(crop_size=(0, 10)), "crop_size"),
    (dict(base_size=(10,)), "base_size"),
    (dict(scale_range=(2.0, 1.0)), "scale_range"),
    (dict(eval_scale=0.0), "eval_scale"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_seg_transforms(True, **kwargs)


def test_bad_inputs_raise(frame):
    t = _plain()
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        t(frame[0].astype(np.float32), frame[1])
    with pytest.raises(ValueError, match="mask must be HxW"):
        t(frame[0], frame[1][:10])
