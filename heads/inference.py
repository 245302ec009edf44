"""Inference fast path: BatchNorm folding, conv + activation fusion, channels-last oneDNN kernels.

* **BN folding.** In eval mode a BatchNorm is the per-channel affine map
  ``(x - mu) / sqrt(var + eps) * g + b``; after a convolution it folds into the
  convolution's weight and bias (Jacob et al., arXiv 1712.05877 §3.2 "batch
  normalization folding"), one memory pass less per layer.
  ``torch.nn.utils.fusion.fuse_conv_bn_eval`` does the arithmetic.
* **Conv + activation.** ReLU / ReLU6 / h-swish / h-sigmoid / SiLU / sigmoid after a
  convolution run inside it, as a oneDNN post-op (the kernel ``torch.compile`` emits on
  CPU, ``torch.ops.mkldnn._convolution_pointwise``).
* **Prepacked weights.** oneDNN wants weights in a blocked layout of its own; given
  plain ones it reorders them on every call (15-30 us per layer, up to 3x a depthwise
  layer's own time). :class:`FusedConv2d` reorders once per input shape and keeps the
  result, as ``torch.compile``'s CPU backend does.
* **Channels-last.** NHWC activations: oneDNN's fastest layout for depthwise and 1x1
  convolutions. Where PyTorch's own kernels beat a oneDNN call (its ~30 us fixed cost),
  they are kept: batch-1 1x1 convolutions on at most ``NATIVE_1X1_MAX_NUMEL`` input
  values (the small maps of SSD's last levels and SE blocks: 13 vs 35 us), and,
  single-threaded, 1x1 convolutions below ``ONEDNN_1X1_MIN_MACS`` multiply-adds (run
  by PyTorch as its own GEMM, "thnn").

Pairs are found by running the model once with forward hooks, so hand-written
``self.bn(self.conv(x))`` forwards are handled as well as ``nn.Sequential`` rows. A conv is
fused with the module that follows it only when that module reads exactly the conv's
output, unmodified, on every call. ``optimize_for_inference(model)`` returns an eval-only
copy with the same forward and attributes whose outputs equal the original's up to float
rounding (``tests/heads/test_inference.py``). Off CPU float32 (CUDA, fp16, tracing for
ONNX) the fused convolutions run as plain ``Conv2d`` + activation.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["FusedConv2d", "InferenceOnlyError", "NATIVE_1X1_MAX_NUMEL", "ONEDNN_1X1_MIN_MACS",
           "PACKED_SHAPES_KEPT", "collapse_sequentials", "example_inputs_for", "fold_batchnorm",
           "fuse_conv_activations", "inference_model", "onednn_available", "optimize_for_inference"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class InferenceOnlyError(RuntimeError):
    """Raised by a training-mode forward of a model returned by :func:`optimize_for_inference`."""


def _onednn_attr(act: nn.Module) -> tuple[str, list[float]] | None:
    """oneDNN post-op name and scalars of an activation module (None: not fusable)."""
    if isinstance(act, nn.ReLU):
        return "relu", []
    if isinstance(act, nn.Hardtanh):  # includes ReLU6
        return "hardtanh", [float(act.min_val), float(act.max_val)]
    names = {nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid", nn.SiLU: "swish", nn.Sigmoid: "sigmoid"}
    return next(((n, []) for t, n in names.items() if isinstance(act, t)), None)


#: Smallest single-threaded 1x1 convolution (multiply-adds per call) sent to oneDNN.
ONEDNN_1X1_MIN_MACS = 4_000_000

#: Largest batch-1 1x1 convolution input (values) left to PyTorch's native kernel when
#: multi-threaded: PyTorch's own oneDNN/native cut-off (``use_mkldnn`` in ATen's Convolution.cpp).
NATIVE_1X1_MAX_NUMEL = 20480

#: Input shapes whose prepacked weights a :class:`FusedConv2d` keeps (least recently added dropped).
PACKED_SHAPES_KEPT = 4

_ACTIVATIONS = (nn.ReLU, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.Sigmoid)


@functools.cache
def onednn_available() -> bool:
    """True when oneDNN's fused conv kernel exists and agrees with ``F.conv2d`` on a probe."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_convolution_pointwise"):
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 4, 5, 5, generator=g).contiguous(memory_format=torch.channels_last)
        w, b = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, generator=g)
        with torch.no_grad():
            ref = F.relu(F.conv2d(x, w, b, 1, 1, 1, 2))
            packed = _pack_weight(w, [1, 1], [1, 1], [1, 1], 2, x.shape)
            return all(bool(torch.allclose(torch.ops.mkldnn._convolution_pointwise(
                x, weight, b, [1, 1], [1, 1], [1, 1], 2, "relu", [], None), ref, atol=1e-4, rtol=1e-4))
                for weight in (w, packed))
    except (RuntimeError, NotImplementedError):
        return False


def _pack_weight(weight: Tensor, padding: list[int], stride: list[int], dilation: list[int], groups: int,
                 input_shape: Sequence[int]) -> Tensor:
    """``weight`` reordered into oneDNN's blocked layout for inputs of ``input_shape`` (an MKLDNN tensor)."""
    return torch._C._nn.mkldnn_reorder_conv2d_weight(weight.detach().to_mkldnn(), padding, stride, dilation,
                                                     groups, list(input_shape))


def _compiling() -> bool:
    is_compiling = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    return bool(is_compiling and is_compiling())


class FusedConv2d(nn.Conv2d):
    """``Conv2d`` (BN already folded in) followed by an optional activation, as one oneDNN kernel.

    Runs ``torch.ops.mkldnn._convolution_pointwise`` for CPU float32 inputs outside
    autograd/tracing, else the plain ``conv2d`` followed by ``activation``. With
    ``channels_last`` the input is made NHWC first (a no-op when it already is).
    """

    def __init__(self, conv: nn.Conv2d, activation: nn.Module | None = None, channels_last: bool = False) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                         device="meta")
        self.weight, self.bias = conv.weight, conv.bias
        self.activation = activation
        attr = (None, []) if activation is None else _onednn_attr(activation)
        self.attr, self.scalars = (attr if attr is not None else (None, []))
        self.channels_last = channels_last
        self._packed: dict[tuple[int, ...], Tensor] = {}  # input shape -> prepacked weight
        self._packed_for: tuple[int, int] | None = None  # (data_ptr, version) of the weight packed

    def __getstate__(self) -> dict[str, Any]:
        # Prepacked weights are a cache of MKLDNN tensors, which neither pickle nor deepcopy.
        return {**super().__getstate__(), "_packed": {}, "_packed_for": None}

    def _packed_weight(self, x: Tensor) -> Tensor:
        """The weight prepacked for ``x``'s shape (repacked when the weight changed)."""
        identity = (self.weight.data_ptr(), self.weight._version)
        if identity != self._packed_for:
            self._packed, self._packed_for = {}, identity
        shape = tuple(x.shape)
        packed = self._packed.get(shape)
        if packed is None:
            if len(self._packed) >= PACKED_SHAPES_KEPT:
                del self._packed[next(iter(self._packed))]
            packed = self._packed[shape] = _pack_weight(self.weight, list(self.padding), list(self.stride),
                                                        list(self.dilation), self.groups, shape)
        return packed

    def _onednn(self, x: Tensor) -> bool:
        # NCHW data stays on PyTorch's own path: oneDNN would reorder it on every call.
        if not (x.device.type == "cpu" and x.dtype == torch.float32 and self.weight.dtype == torch.float32
                and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)
                and (self.activation is None or self.attr is not None)
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
                and not torch.jit.is_tracing() and not _compiling() and onednn_available()):
            return False
        if self.kernel_size != (1, 1):
            return True  # PyTorch would call oneDNN too, without the fused activation
        if torch.get_num_threads() > 1:  # PyTorch's native kernel only wins where PyTorch picks it itself
            return not (x.shape[0] == 1 and self.groups == 1 and self.stride == (1, 1)
                        and x.numel() <= NATIVE_1X1_MAX_NUMEL)
        # Single-threaded 1x1: PyTorch's own GEMM path wins below a few million multiply-adds
        # (oneDNN costs ~30 us per call); above, oneDNN is faster.
        macs = x.shape[0] * x.shape[2] * x.shape[3] * self.in_channels * self.out_channels
        return macs // (self.stride[0] * self.stride[1] * self.groups) >= ONEDNN_1X1_MIN_MACS

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self._onednn(x):
            return torch.ops.mkldnn._convolution_pointwise(
                x, self._packed_weight(x), self.bias, list(self.padding), list(self.stride), list(self.dilation),
                self.groups, self.attr or "none", self.scalars, None)
        y = self._conv_forward(x, self.weight, self.bias)
        return y if self.activation is None else self.activation(y)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", channels_last={self.channels_last}" if self.channels_last else "")


def example_inputs_for(model: nn.Module) -> tuple[Any, ...]:
    """A small input that runs ``model`` (SSDLite: one image at its ``size``; else 1x3x128x128)."""
    size = getattr(model, "size", None)
    if isinstance(size, tuple) and len(size) == 2:  # SSDLite resizes internally; its own size is cheapest
        return (torch.zeros(1, 3, *size),)
    side = max(128, int(getattr(getattr(model, "backbone", model), "min_size", 32)))
    return (torch.zeros(1, 3, side, side),)


def _inputs(model: nn.Module, example_inputs: Sequence[Any] | None) -> tuple[Any, ...]:
    inputs = tuple(example_inputs) if example_inputs is not None else example_inputs_for(model)
    param = next(model.parameters(), None)
    if param is not None:
        inputs = tuple(x.to(param.device) if isinstance(x, Tensor) else x for x in inputs)
    return inputs


def _conv_followers(model: nn.Module, example_inputs: Sequence[Any], conv_types: tuple[type, ...],
                    follower_types: tuple[type, ...]) -> list[tuple[str, str]]:
    """(conv, follower) names where the follower reads exactly that conv's output (one forward pass).

    Forward hooks see the tensors flowing between modules, so any wiring is found:
    ``nn.Sequential`` rows as well as ``self.bn(self.conv(x))`` in a hand-written forward.
    A tensor's version counter tells whether something modified it in place in between.
    """
    names = {m: n for n, m in model.named_modules()}
    produced: dict[int, tuple[str, int]] = {}  # id(conv output) -> (conv name, version counter)
    keep_alive: list[Tensor] = []  # tensor ids must not be reused during the pass
    pairs: dict[str, str] = {}  # follower -> conv ("" when it ever reads anything else)
    calls: dict[str, int] = {}

    def conv_hook(mod: nn.Module, inputs: tuple, output: Any) -> None:
        calls[names[mod]] = calls.get(names[mod], 0) + 1
        if isinstance(output, Tensor):
            produced[id(output)] = (names[mod], output._version)
            keep_alive.append(output)

    def follower_hook(mod: nn.Module, inputs: tuple) -> None:
        name = names[mod]
        calls[name] = calls.get(name, 0) + 1
        x = inputs[0] if len(inputs) == 1 and isinstance(inputs[0], Tensor) else None
        conv, version = produced.get(id(x), ("", -1))
        if x is None or x._version != version:
            conv = ""
        pairs[name] = conv if pairs.get(name, conv) == conv else ""

    handles = []
    for m in model.modules():
        if type(m) in conv_types:  # exact types: a FusedConv2d already holds its activation
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, follower_types):
            handles.append(m.register_forward_pre_hook(follower_hook))
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for h in handles:
            h.remove()
    # Every call of the conv feeds this follower and every call of the follower reads this conv.
    return [(c, f) for f, c in pairs.items() if c and calls[c] == calls[f]]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def fold_batchnorm(model: nn.Module, example_inputs: Sequence[Any] | None = None) -> int:
    """Fold every eval-mode BatchNorm that directly follows a convolution into it, in place.

    The convolution gets the folded weight and bias; the BatchNorm becomes ``nn.Identity``
    (module indices, e.g. ``block[1]``, stay valid). Returns the number of folded pairs.

    Args:
        model: an eval-mode model (its running statistics are what gets folded).
        example_inputs: positional inputs for one forward pass (default :func:`example_inputs_for`).
    """
    if model.training:
        raise ValueError("fold_batchnorm needs model.eval(): training-mode BN uses batch statistics")
    folded = 0
    for conv_name, bn_name in _conv_followers(model, _inputs(model, example_inputs), _CONVS, _NORMS):
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        if bn.running_mean is None or bn.running_var is None:
            continue  # track_running_stats=False: eval still uses batch statistics
        _set_submodule(model, conv_name, fuse_conv_bn_eval(conv, bn))
        _set_submodule(model, bn_name, nn.Identity())
        folded += 1
    return folded


def fuse_conv_activations(model: nn.Module, example_inputs: Sequence[Any] | None = None,
                          channels_last: bool = False) -> int:
    """Replace every ``Conv2d`` by a :class:`FusedConv2d`, absorbing the activation that follows it.

    Run after :func:`fold_batchnorm` (a BN between them prevents the fusion). The absorbed
    activation module becomes ``nn.Identity``. Returns the number of absorbed activations.
    """
    pairs = dict(_conv_followers(model, _inputs(model, example_inputs), (nn.Conv2d,), _ACTIVATIONS))
    for name, m in list(model.named_modules()):
        if type(m) is nn.Conv2d:
            act = model.get_submodule(pairs[name]) if name in pairs else None
            if act is not None and _onednn_attr(act) is None:
                act = None
            _set_submodule(model, name, FusedConv2d(m, act, channels_last))
            if act is not None:
                _set_submodule(model, pairs[name], nn.Identity())
    return sum(1 for m in model.modules() if isinstance(m, FusedConv2d) and m.activation is not None)


def collapse_sequentials(model: nn.Module) -> int:
    """Replace every ``nn.Sequential`` left with one non-identity child (e.g. a fused
    ``Conv2dNormActivation``) by that child, in place; returns how many were replaced.

    After fusion such a row is ``[FusedConv2d, Identity, Identity]``: four module calls for
    one kernel. The parent keeps its indices (``block[0]`` is now the convolution).
    """
    replaced = 0
    for name, m in reversed(list(model.named_modules())):  # children before parents
        if isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward and name:
            live = [c for c in m if not isinstance(c, nn.Identity)]
            if len(live) == 1:
                _set_submodule(model, name, live[0])
                replaced += 1
    return replaced


def _refuse_training(module: nn.Module, args: Any) -> None:
    """Forward pre-hook of optimised models: BN is gone, training-mode forwards would be wrong."""
    if module.training:
        raise InferenceOnlyError(
            f"this {type(module).__name__} was built by optimize_for_inference (BatchNorm folded into the "
            "convolutions) and cannot train; call .eval(), or train the original model and optimise it again")


def optimize_for_inference(
    model: nn.Module, *, channels_last: bool = True, fuse: bool = True,
    example_inputs: Sequence[Any] | None = None,
) -> nn.Module:
    """An eval-only copy of ``model`` for fast inference, with the same forward and attributes.

    Args:
        model: any module built from ``Conv2d``/``BatchNorm2d``/activation modules (the
            detectors, segmenters and classifiers of this package). It is not modified.
        channels_last: keep activations NHWC (weights are stored NHWC, convolutions
            convert their input); outputs hold the same values in that layout (call
            ``.contiguous()`` where an NCHW buffer is required).
        fuse: fold BatchNorm into convolutions and absorb their activations
            (:func:`fold_batchnorm`, :func:`fuse_conv_activations`).
        example_inputs: inputs of the one forward pass that finds the pairs
            (default :func:`example_inputs_for`).

    A forward of the copy in training mode raises :class:`InferenceOnlyError`;
    ``folded_batchnorms`` and ``fused_activations`` count what was fused. Its
    ``state_dict`` has other keys (no BatchNorm): save and load the original model.
    """
    fast = copy.deepcopy(model).eval()
    fast.folded_batchnorms = fold_batchnorm(fast, example_inputs) if fuse else 0
    fast.fused_activations = 0
    if fuse:
        fast.fused_activations = fuse_conv_activations(fast, example_inputs, channels_last)
        collapse_sequentials(fast)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    for p in fast.parameters():
        p.requires_grad_(False)
    fast.register_forward_pre_hook(_refuse_training)  # a module-level function: the model still pickles
    fast.optimized_for_inference = True
    return fast


def inference_model(model: nn.Module, device: torch.device | str = "cpu", eager: bool = False) -> nn.Module:
    """``model`` in eval mode on ``device``; on CPU its :func:`optimize_for_inference` copy unless ``eager``.

    What ``eval``/``predict`` run and what training evaluates, so both give the same numbers.
    On CUDA the model runs as built: the fused kernels are CPU ones (oneDNN).
    """
    device = torch.device(device)
    model = model.eval().to(device)
    if eager or device.type != "cpu" or getattr(model, "runs_outside_torch", False):  # an exported artifact
        return model
    return optimize_for_inference(model)
