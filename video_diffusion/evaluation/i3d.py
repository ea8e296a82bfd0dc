"""
Inception-I3D (Carreira & Zisserman 2017), RGB stream, in PyTorch, laid out to equal the
TF-Hub ``i3d-kinetics-400`` module that the reference FVD uses:

- TensorFlow "SAME" padding, asymmetric and computed from the input size at run time;
- max-pooling padded with -inf (padding never wins a max);
- batch norm with eps 1e-3 and no scale (gamma), in inference mode;
- the head: 2x7x7 average pool (VALID), a 1x1x1 convolution with bias to 400 logits,
  averaged over the remaining time steps. FVD uses those 400 pre-softmax logits.

Input: [N, 3, T, 224, 224] in [-1, 1] with T >= 10 (shorter clips leave nothing for
the head's 2-frame pool after the 8x temporal downsampling).
"""

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

MIN_FRAMES = 10

# (name, (branch_0, branch_1a, branch_1b, branch_2a, branch_2b, branch_3)) of each inception module
INCEPTION = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32), "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64), "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64), "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128), "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


def same_padding(size: int, kernel: int, stride: int):
    """TensorFlow's SAME padding for one axis: (before, after), the extra pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], value: float = 0.0) -> torch.Tensor:
    pads = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):  # F.pad goes last axis first
        pads.extend(same_padding(size, k, s))
    return F.pad(x, pads, value=value)


class MaxPoolSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x):
        return F.max_pool3d(pad_same(x, self.kernel, self.stride, value=-math.inf), self.kernel, self.stride)


class Unit3D(nn.Module):
    """Convolution (SAME padding) + batch norm without scale (eps 1e-3) + ReLU."""

    def __init__(self, in_channels, out_channels, kernel=(1, 1, 1), stride=(1, 1, 1)):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.conv = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, bias=False)
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, affine=False)
        self.bn_bias = nn.Parameter(torch.zeros(out_channels))  # TF's beta; there is no gamma

    def forward(self, x):
        x = self.conv(pad_same(x, self.kernel, self.stride))
        x = F.batch_norm(x, self.bn.running_mean, self.bn.running_var, None, self.bn_bias, False, 0.0, self.bn.eps)
        return F.relu(x)


class InceptionModule(nn.Module):
    def __init__(self, in_channels, c):
        super().__init__()
        self.branch_0 = Unit3D(in_channels, c[0])
        self.branch_1a, self.branch_1b = Unit3D(in_channels, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.branch_2a, self.branch_2b = Unit3D(in_channels, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.branch_3_pool, self.branch_3 = MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(in_channels, c[5])
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x):
        return torch.cat([self.branch_0(x), self.branch_1b(self.branch_1a(x)), self.branch_2b(self.branch_2a(x)),
                          self.branch_3(self.branch_3_pool(x))], dim=1)


class InceptionI3d(nn.Module):
    """The RGB I3D up to its 400 Kinetics logits (averaged over time)."""

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        channels = 192
        self.mixed = nn.ModuleDict()
        for name, c in INCEPTION.items():
            if name == "Mixed_4b":
                self.mixed["MaxPool3d_4a_3x3"] = MaxPoolSame((3, 3, 3), (2, 2, 2))
            if name == "Mixed_5b":
                self.mixed["MaxPool3d_5a_2x2"] = MaxPoolSame((2, 2, 2), (2, 2, 2))
            self.mixed[name] = InceptionModule(channels, c)
            channels = self.mixed[name].out_channels
        self.logits = nn.Conv3d(channels, num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        :param x: [N, 3, T, 224, 224] in [-1, 1], T >= 10.
        :return: [N, 400] logits, averaged over time.
        """
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"I3D takes RGB clips [N, 3, T, H, W], got {tuple(x.shape)}")
        if x.shape[2] < MIN_FRAMES:
            raise ValueError(f"I3D needs at least {MIN_FRAMES} frames per clip, got {x.shape[2]}")
        for layer in (self.Conv3d_1a_7x7, self.MaxPool3d_2a_3x3, self.Conv3d_2b_1x1, self.Conv3d_2c_3x3,
                      self.MaxPool3d_3a_3x3, *self.mixed.values()):
            x = layer(x)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # VALID: 1x1 in space for 224x224 input
        # averaged over time (and over space, which is 1x1 at 224 pixels: the reference squeezes it)
        return self.logits(x).mean(dim=(2, 3, 4))
