"""Adapters between tapped layers, built from probed shapes.

Terms build these in ``Term.setup(shapes)`` from the shapes the Distiller probed
(batch dimension included), so channel and spatial mismatches between any student and
teacher resolve without the user giving sizes. Adapters are ordinary modules owned by
the term: they train with the student, are saved with it, and never see the teacher's
parameters (the teacher's features arrive as plain tensors).

- :class:`ConvRegressor`: FitNets' regressor; the paper's "valid" kernel or 1x1.
- :class:`Connector`, :func:`connector`: AB's 1x1 conv + BN on the student (identity
  when shapes match).
- :class:`Paraphraser`, :class:`Translator`: FT's auto-encoder on the teacher feature
  and the student's matching encoder.
- :func:`resample`, :func:`spatial_size`: spatial matching helpers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.errors import TapError


def spatial_size(shape: Sequence[int]) -> tuple[int, int] | None:
    """``(H, W)`` of an ``(N, C, H, W)`` shape, None for ``(N, D)`` vectors."""
    if len(shape) == 4:
        return int(shape[2]), int(shape[3])
    if len(shape) == 2:
        return None
    raise TapError(f"a tapped feature must be (N, C, H, W) or (N, D); got shape {tuple(shape)}")


def resample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bring a map to ``size``: average pooling to shrink, bilinear interpolation to grow.

    Pooling keeps each output the mean of its receptive window (what RepDistiller uses
    for AT/NST/FSP); growing has no such choice, so bilinear is used.
    """
    h, w = x.shape[2:]
    if (h, w) == tuple(size):
        return x
    if h >= size[0] and w >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _describe(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape[1:])


class ConvRegressor(nn.Module):
    """Maps a student feature onto a teacher feature's shape (FitNets' regressor).

    For maps, ``kernel="valid"`` is the paper's choice (arXiv:1412.6550): a
    convolution without padding whose kernel is ``N_g - N_h + 1`` in each dimension,
    so the output has the hint's spatial size with far fewer parameters than a fully
    connected regressor; when the student map is *smaller* it is the transposed
    convolution with kernel ``N_h - N_g + 1``. Equal sizes give a 1x1 conv.
    ``kernel=1`` is a 1x1 conv followed by :func:`resample` (cheap for large spatial
    gaps, e.g. across architectures). ``bn``/``relu`` follow the convolution
    (RepDistiller's ConvReg uses both; the paper asks the regressor to have the hint
    layer's non-linearity, i.e. ReLU for post-ReLU hints). For ``(N, D)`` vectors it is
    a linear layer (+ BatchNorm1d, ReLU).
    """

    def __init__(
        self,
        student_shape: Sequence[int],
        teacher_shape: Sequence[int],
        kernel: Literal["valid", 1] = "valid",
        bn: bool = False,
        relu: bool = False,
    ) -> None:
        super().__init__()
        s_hw, t_hw = spatial_size(student_shape), spatial_size(teacher_shape)
        cin, cout = int(student_shape[1]), int(teacher_shape[1])
        self.out_size = t_hw
        layers: list[nn.Module] = []
        if s_hw is None or t_hw is None:
            if s_hw is not None or t_hw is not None:
                raise TapError(
                    f"cannot regress a student feature {_describe(student_shape)} onto a "
                    f"teacher feature {_describe(teacher_shape)}: tap two maps or two vectors"
                )
            layers.append(nn.Linear(cin, cout, bias=not bn))
            if bn:
                layers.append(nn.BatchNorm1d(cout))
            self.resize = False
        else:
            dh, dw = s_hw[0] - t_hw[0], s_hw[1] - t_hw[1]
            if kernel == "valid" and dh >= 0 and dw >= 0:
                layers.append(nn.Conv2d(cin, cout, (dh + 1, dw + 1), bias=not bn))
                self.resize = False
            elif kernel == "valid" and dh <= 0 and dw <= 0:
                layers.append(nn.ConvTranspose2d(cin, cout, (1 - dh, 1 - dw), bias=not bn))
                self.resize = False
            else:  # 1x1, or a map larger in one dimension and smaller in the other
                layers.append(nn.Conv2d(cin, cout, 1, bias=not bn))
                self.resize = True
            if bn:
                layers.append(nn.BatchNorm2d(cout))
        if relu:
            layers.append(nn.ReLU())
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        if self.resize and self.out_size is not None:
            y = resample(y, self.out_size)
        return y


class Connector(ConvRegressor):
    """AB's connector (arXiv:1811.03233): 1x1 conv + BN from student to teacher.

    The paper connects layers of equal spatial size; across architectures the output
    is resampled to the teacher's size. No ReLU: it produces pre-activations. The conv
    starts from the authors' ``normal(0, sqrt(2 / n))``, ``n = k*k*out_channels``
    (bhheo/AB_distillation), BN from weight 1, bias 0. Where the two maps already have
    one shape, use :func:`connector` (identity, as the authors and RepDistiller do).
    """

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int]) -> None:
        super().__init__(student_shape, teacher_shape, kernel=1, bn=True, relu=False)
        for m in self.body:
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))


def connector(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Module:
    """AB's connector: the identity when the shapes match (minus batch), else :class:`Connector`."""
    if tuple(student_shape[1:]) == tuple(teacher_shape[1:]):
        return nn.Identity()
    return Connector(student_shape, teacher_shape)


def _conv_bn_act(cin: int, cout: int, bn: bool, transpose: bool = False) -> list[nn.Module]:
    conv_cls = nn.ConvTranspose2d if transpose else nn.Conv2d
    layers: list[nn.Module] = [conv_cls(cin, cout, 3, stride=1, padding=1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.LeakyReLU(0.1))
    return layers


def factor_channels(teacher_channels: int, rate: float) -> int:
    """FT's factor width: ``round(rate * C_T)`` (at least 1)."""
    return max(1, int(round(teacher_channels * rate)))


class Paraphraser(nn.Module):
    """FT's paraphraser (arXiv:1802.04977): a conv auto-encoder on a teacher map.

    Encoder: three 3x3 convs ``C -> C -> kC -> kC``; decoder: three 3x3 transposed convs
    ``kC -> kC -> C -> C``; each followed by LeakyReLU(0.1), stride 1, with no BatchNorm,
    as in the authors' code and RepDistiller (``bn=True`` adds BN after each conv). The
    encoder output is the teacher factor; the paraphraser rate is ``k`` (paper: 0.5 on
    CIFAR).
    """

    def __init__(self, channels: int, rate: float = 0.5, bn: bool = False) -> None:
        super().__init__()
        k = factor_channels(channels, rate)
        self.encoder = nn.Sequential(
            *_conv_bn_act(channels, channels, bn),
            *_conv_bn_act(channels, k, bn),
            *_conv_bn_act(k, k, bn),
        )
        self.decoder = nn.Sequential(
            *_conv_bn_act(k, k, bn, transpose=True),
            *_conv_bn_act(k, channels, bn, transpose=True),
            *_conv_bn_act(channels, channels, bn, transpose=True),
        )

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction ``P(x)`` (the pre-stage's target is ``x``)."""
        return self.decoder(self.encoder(x))


class Translator(nn.Module):
    """FT's translator: three 3x3 convs ``C_S -> C_S -> kC_T -> kC_T`` on the student map.

    Each conv is followed by BN (RepDistiller's translator; the authors' has none:
    ``bn=False``) and LeakyReLU(0.1). Its output is the student factor, resampled to the
    teacher map's spatial size when the two differ (cross-architecture pairs).
    """

    def __init__(
        self,
        student_shape: Sequence[int],
        teacher_shape: Sequence[int],
        rate: float = 0.5,
        bn: bool = True,
    ) -> None:
        super().__init__()
        s_hw, t_hw = spatial_size(student_shape), spatial_size(teacher_shape)
        if s_hw is None or t_hw is None:
            raise TapError(
                f"FT needs (N, C, H, W) maps; got student {_describe(student_shape)} and "
                f"teacher {_describe(teacher_shape)}"
            )
        cs, k = int(student_shape[1]), factor_channels(int(teacher_shape[1]), rate)
        self.out_size = t_hw
        self.body = nn.Sequential(
            *_conv_bn_act(cs, cs, bn), *_conv_bn_act(cs, k, bn), *_conv_bn_act(k, k, bn)
        )

    def forward(self, x: Tensor) -> Tensor:
        return resample(self.body(x), self.out_size)
