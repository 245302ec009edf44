"""Class ids from coarse logits: ``upsampled_argmax`` equals ``F.interpolate(...).argmax(1)``.

Exact by construction where a pixel's 2x2 sources share their argmax; elsewhere the same
bilinear weights, so any difference could only be a float near-tie (none on these inputs).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mobiledense.heads import lraspp_mobilenet_v3_small
from mobiledense.heads import segmenter as seg
from mobiledense.heads.segmenter import coarse_logits, upsampled_argmax


def _reference(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1)


def _regions(n: int, c: int, h: int, w: int, cells: int, seed: int) -> torch.Tensor:
    """Logits of a label map of large regions (a trained model's), with a little noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, c, max(1, h // cells), max(1, w // cells), generator=g) * 3
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False) + 0.05 * torch.randn(
        n, c, h, w, generator=g)


@pytest.mark.parametrize("shape, size", [((1, 19, 64, 128), (512, 1024)), ((2, 5, 13, 17), (97, 131)),
                                         ((1, 7, 40, 50), (23, 31)), ((1, 3, 9, 9), (200, 300))])
@pytest.mark.parametrize("kind", ["regions", "noise"])
@pytest.mark.parametrize("max_elements", [2**24, 5000])
def test_equals_interpolate_then_argmax(shape, size, kind, max_elements) -> None:
    n, c, h, w = shape
    logits = _regions(n, c, h, w, 8, 0) if kind == "regions" else torch.randn(*shape, generator=torch.Generator()
                                                                               .manual_seed(1))
    got = upsampled_argmax(logits, size, max_elements=max_elements)
    assert got.shape == (n, *size) and got.dtype == torch.int64
    assert torch.equal(got, _reference(logits, size))
    assert torch.equal(upsampled_argmax(logits, size, max_elements=max_elements, dtype=torch.uint8),
                       got.to(torch.uint8))
    # Channels-last logits (what an optimised model's decoder returns) give the same.
    assert torch.equal(upsampled_argmax(logits.contiguous(memory_format=torch.channels_last), size), got)


def test_both_paths_run_and_agree(monkeypatch) -> None:
    """The boundary-only path on a label map of regions, the dense one on noise; each forced on the other."""
    logits = _regions(1, 19, 64, 128, 16, 2)
    expected = _reference(logits, (512, 1024))
    for fraction in (2.0, -1.0):  # never dense / always dense
        monkeypatch.setattr(seg, "_DENSE_FRACTION", fraction)
        assert torch.equal(upsampled_argmax(logits, (512, 1024)), expected)
        assert torch.equal(upsampled_argmax(logits, (512, 1024), max_elements=2**16), expected)


def test_first_maximum_on_ties_as_argmax() -> None:
    logits = torch.zeros(1, 4, 6, 6)
    logits[:, 1:3] = 1.0  # classes 1 and 2 tie everywhere
    assert (upsampled_argmax(logits, (6, 6)) == 1).all() and (upsampled_argmax(logits, (24, 18)) == 1).all()


def test_segmenter_labels_are_its_forward_argmax() -> None:
    torch.manual_seed(0)
    model = lraspp_mobilenet_v3_small(num_classes=5).eval()
    x = torch.rand(2, 3, 96, 160, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits, decoded = model(x), model.decode(x)
        assert decoded.shape == (2, 5, 12, 20) and model.decodes_at_stride
        torch.testing.assert_close(F.interpolate(decoded, size=(96, 160), mode="bilinear", align_corners=False),
                                   logits)
        assert torch.equal(model.labels(x), logits.argmax(1))
        assert torch.equal(coarse_logits(model, x), decoded)
        # At another size: one upsampling from the decoder's stride.
        assert torch.equal(model.labels(x, (150, 250), dtype=torch.uint8), _reference(decoded, (150, 250)).byte())
