"""SSDLite blocks: separable predictors, extra layers, the (N, HWB, K) layout."""

from __future__ import annotations

import torch
from torch import nn

from mobiledense.heads import SSDLiteHead, extra_blocks
from mobiledense.heads.ssdlite import BatchNorm, ScoringHead, prediction_block


def test_prediction_block_is_depthwise_bn_relu6_then_pointwise() -> None:
    block = prediction_block(32, 60)
    dw, pw = block[0], block[1]
    assert dw[0].groups == 32 and dw[0].kernel_size == (3, 3) and dw[0].bias is None
    assert isinstance(dw[1], nn.BatchNorm2d) and dw[1].eps == 0.001 and dw[1].momentum == 0.03
    assert isinstance(dw[2], nn.ReLU6)
    assert pw.kernel_size == (1, 1) and pw.bias is not None and pw.out_channels == 60


def test_extra_blocks_depths_width_and_min_depth() -> None:
    blocks = extra_blocks(960)
    assert [b[-1].out_channels for b in blocks] == [512, 256, 256, 128]
    assert [b[0].out_channels for b in blocks] == [256, 128, 128, 64]  # 1x1 to half the depth
    assert all(b[1][0].stride == (2, 2) and b[1][0].groups == b[1][0].in_channels for b in blocks)
    assert [b[-1].out_channels for b in extra_blocks(960, width_mult=0.5)] == [256, 128, 128, 64]
    assert [b[-1].out_channels for b in extra_blocks(960, width_mult=0.05)] == [25, 16, 16, 16]
    x = torch.randn(1, 960, 10, 10)
    sizes = []
    for b in blocks.eval():
        x = b(x)
        sizes.append(tuple(x.shape[-2:]))
    assert sizes == [(5, 5), (3, 3), (2, 2), (1, 1)]


def test_scoring_head_layout_matches_anchor_order() -> None:
    # One level, 2x3 map, 2 boxes per location, 3 columns: output row = (y * 3 + x) * 2 + box.
    conv = nn.Conv2d(1, 6, 1, bias=False)
    head = ScoringHead(nn.ModuleList([conv]), 3)
    x = torch.zeros(1, 1, 2, 3)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[4, 0] = 1.0  # channel 4 = box 1, column 1
        x[0, 0, 1, 2] = 7.0      # location y=1, x=2
    out = head([x])
    assert out.shape == (1, 12, 3)
    nonzero = out[0].nonzero().tolist()
    assert nonzero == [[(1 * 3 + 2) * 2 + 1, 1]]


def test_head_outputs_and_init() -> None:
    head = SSDLiteHead([16, 24], [6, 3], num_classes=5, norm_layer=BatchNorm, cls_bias=-4.6).eval()
    feats = [torch.randn(2, 16, 4, 4), torch.randn(2, 24, 2, 2)]
    out = head(feats)
    assert out["cls_logits"].shape == (2, 4 * 4 * 6 + 2 * 2 * 3, 5)
    assert out["bbox_regression"].shape == (2, 4 * 4 * 6 + 2 * 2 * 3, 4)
    assert all(torch.all(b[1].bias == -4.6) for b in head.classification_head.module_list)
    assert all(torch.all(b[1].bias == 0) for b in head.regression_head.module_list)
    assert 0.02 < head.regression_head.module_list[0][1].weight.std() < 0.04  # N(0, 0.03)
