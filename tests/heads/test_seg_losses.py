"""Segmentation losses: ignore_index in every term, optimisation, spec parsing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mobiledense.heads.seg_losses import SEG_LOSSES, SegLoss, build_seg_loss

SPECS = ["ce", "dice", "focal", "lovasz", "ce+dice", "ce+0.5*lovasz", "focal+dice"]


def _problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 4, 6, 7, generator=g)
    target = torch.randint(0, 4, (2, 6, 7), generator=g)
    target[:, :2] = 255  # two void rows per image
    return logits, target


@pytest.mark.parametrize("spec", SPECS)
def test_ignored_pixels_do_not_count(spec: str) -> None:
    loss_fn = build_seg_loss(spec)
    logits, target = _problem()
    logits.requires_grad_(True)
    loss = loss_fn(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert logits.grad[:, :, :2].abs().max() == 0, "gradient reached ignored pixels"
    assert logits.grad[:, :, 2:].abs().max() > 0
    changed = logits.detach().clone()
    changed[:, :, :2] = torch.randn_like(changed[:, :, :2]) * 10
    torch.testing.assert_close(loss_fn(changed, target), loss.detach())


@pytest.mark.parametrize("spec", SPECS)
def test_loss_decreases_under_optimisation(spec: str) -> None:
    loss_fn = build_seg_loss(spec)
    init, target = _problem(1)
    logits = nn.Parameter(init * 0.1)
    opt = torch.optim.Adam([logits], lr=0.1)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = loss_fn(logits, target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    valid = target != 255
    assert (logits.argmax(1)[valid] == target[valid]).float().mean() > 0.95


def test_weights_and_terms() -> None:
    logits, target = _problem()
    ce, dice = build_seg_loss("ce")(logits, target), build_seg_loss("dice")(logits, target)
    torch.testing.assert_close(build_seg_loss("ce + 0.25*Dice")(logits, target), ce + 0.25 * dice)
    assert list(build_seg_loss("ce+dice").terms) == ["ce", "dice"]
    assert "0.5*lovasz" in repr(build_seg_loss("ce+0.5*lovasz"))


def test_custom_ignore_index() -> None:
    logits, target = _problem()
    target[target == 255] = -1
    loss_fn = build_seg_loss("ce+dice+focal+lovasz", ignore_index=-1)
    changed = logits.clone()
    changed[:, :, :2] += 5.0
    torch.testing.assert_close(loss_fn(changed, target), loss_fn(logits, target))


def test_all_ignored_is_zero_and_differentiable() -> None:
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = build_seg_loss("ce+dice+focal+lovasz")(logits, torch.full((1, 4, 4), 255))
    loss.backward()
    assert loss.item() == 0 and logits.grad is not None and torch.isfinite(logits.grad).all()


def test_half_precision_logits_are_computed_in_float32() -> None:
    logits, target = _problem()
    loss_fn = build_seg_loss("ce+lovasz")
    out = loss_fn(logits.half(), target)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, loss_fn(logits.half().float(), target))


def test_bad_specs_and_inputs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="valid names: ce, dice, focal, lovasz"):
        build_seg_loss("ce+tversky")
    with pytest.raises(ValueError, match="twice"):
        build_seg_loss("ce+ce")
    with pytest.raises(ValueError, match="bad weight"):
        build_seg_loss("x*dice")
    loss_fn = build_seg_loss("ce")
    with pytest.raises(ValueError, match="upsample logits"):
        loss_fn(torch.randn(1, 3, 4, 4), torch.zeros(1, 8, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="integer class ids"):
        loss_fn(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4))


def test_registry_names() -> None:
    assert set(SEG_LOSSES) == {"ce", "dice", "focal", "lovasz"}
    assert isinstance(build_seg_loss(), SegLoss)
