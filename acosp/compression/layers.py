"""The layers a compressed network is made of, where plain ``nn.Conv2d`` and friends do not suffice.

A narrowed conv may have to

- fold the pruned channels of its input, which are constants, into its output: exact in the bias
  where every tap of the kernel sees the image, plus a correction on the border rows and columns
  where taps fall on the zero padding (``constant_kernel`` holds the summed constant per tap);
- write its few computed channels into a wider tensor (``out_index`` into ``out_width`` channels),
  when the residual sum it feeds keeps channels that other branches computed.

``RemovedLayer`` stands where the traced forward pass never called a layer (PSPNet's auxiliary
head in eval mode), so that a compressed checkpoint does not carry its weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _validity(size: int, out_size: int, kernel: int, stride: int, pad_before: int, dilation: int) -> torch.Tensor:
    """``[out_size, kernel]``: whether tap i of output position y reads the image rather than the padding."""
    position = torch.arange(out_size)[:, None] * stride - pad_before + torch.arange(kernel)[None, :] * dilation
    return (position >= 0) & (position < size)


def _edge_counts(size: int, out_size: int, kernel: int, stride: int, pad_before: int, dilation: int) -> tuple[int, int]:
    """How many leading and trailing output positions have a tap on the padding (from the sizes alone).

    Position y reads padding when ``y * stride < pad_before`` or when its last tap,
    ``y * stride - pad_before + (kernel - 1) * dilation``, lies beyond the image.
    """
    leading = min(out_size, -(-pad_before // stride))
    first_trailing = -(-(size + pad_before - (kernel - 1) * dilation) // stride)
    trailing = out_size - min(out_size, max(first_trailing, leading))
    return leading, trailing


def add_border_correction(
    output: torch.Tensor, input_size: tuple[int, int], kernel: torch.Tensor, conv: nn.Conv2d
) -> torch.Tensor:
    """Add, in place, what constant input channels give at the border beyond their interior value.

    ``kernel[o, i, j]`` is the constant channels' summed contribution through tap (i, j); the
    interior value ``kernel[o].sum()`` is already in the bias. At an output position whose taps
    partly fall on zero padding only the taps on the image count. Validity is separable, so only
    the border rows and columns are touched.
    """
    height, width = output.shape[-2:]
    kernel_h, kernel_w = conv.kernel_size
    if isinstance(conv.padding, str):  # 'same': the smaller half of the padding comes first
        pad_h = conv.dilation[0] * (kernel_h - 1) // 2
        pad_w = conv.dilation[1] * (kernel_w - 1) // 2
    else:
        pad_h, pad_w = conv.padding
    row_geometry = (input_size[0], height, kernel_h, conv.stride[0], pad_h, conv.dilation[0])
    col_geometry = (input_size[1], width, kernel_w, conv.stride[1], pad_w, conv.dilation[1])
    top, bottom = _edge_counts(*row_geometry)
    left, right = _edge_counts(*col_geometry)
    if not (top or bottom or left or right):
        return output
    rows = _validity(*row_geometry).to(kernel)
    cols = _validity(*col_geometry).to(kernel)
    interior = kernel.sum((1, 2))
    dtype = output.dtype
    if top or bottom:
        edge_rows = torch.cat([rows[:top], rows[height - bottom :]])
        correction = torch.einsum("yi,oij,xj->oyx", edge_rows, kernel, cols) - interior[:, None, None]
        correction = correction.to(dtype)
        if top:
            output[:, :, :top] += correction[:, :top]
        if bottom:
            output[:, :, height - bottom :] += correction[:, top:]
    if (left or right) and top + bottom < height:
        correction = (torch.einsum("oij,xj->ox", kernel, cols) - interior[:, None]).to(dtype)
        if left:
            output[:, :, top : height - bottom, :left] += correction[:, None, :left]
        if right:
            output[:, :, top : height - bottom, width - right :] += correction[:, None, width - right :]
    return output


def _scatter(output: torch.Tensor, index: torch.Tensor, width: int, fill: torch.Tensor | None) -> torch.Tensor:
    """The computed channels placed at ``index`` of ``width`` channels; the others are 0, as masked.

    With a BatchNorm folded into the conv, the others are what it makes of 0: ``fill``.
    """
    shape = (output.shape[0], width, *output.shape[2:])
    if fill is None:
        full = output.new_zeros(shape)
    else:
        full = fill.to(output.dtype).view(1, width, *[1] * (output.dim() - 2)).expand(shape).clone()
    return full.index_copy_(1, index, output)  # in place: one pass less over the wide tensor


class _Narrowed:
    """What both compressed conv kinds add to a conv: the wider output they write into, and the
    kernel that folds constant input channels (their buffers are filled by ``acosp.compress``)."""

    def __init__(
        self, *args, out_width: int | None = None, constant_input: bool = False, filled: bool = False, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.out_width = out_width
        self.constant_input = constant_input
        if out_width is not None:
            self.register_buffer("out_index", torch.zeros(self.out_channels, dtype=torch.long))
        self.register_buffer("out_fill", torch.zeros(out_width) if out_width is not None and filled else None)
        if constant_input:
            self.register_buffer("constant_kernel", torch.zeros(self.out_channels, *self.kernel_size))

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.out_width is not None:
            text += f", out_width={self.out_width}"
        if self.constant_input:
            text += ", constant_input=True"
        if self.out_fill is not None:
            text += ", filled=True"
        return text


class CompressedConv2d(_Narrowed, nn.Conv2d):
    """A narrowed conv that folds constant input channels exactly and may write into a wider tensor."""

    unprunable = True  # a mask on its outputs would not match ``out_width``

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._conv_forward(x, self.weight, self.bias)
        if self.constant_input:
            y = add_border_correction(y, tuple(x.shape[-2:]), self.constant_kernel, self)
        if self.out_width is not None:
            y = _scatter(y, self.out_index, self.out_width, self.out_fill)
        return y


class CompressedConvTranspose2d(_Narrowed, nn.ConvTranspose2d):
    """A narrowed transposed conv; constant input channels add their (periodic) map to the output."""

    unprunable = True

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        output_padding = self._output_padding(
            x, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation
        )
        arguments = (self.stride, self.padding, output_padding)
        y = F.conv_transpose2d(x, self.weight, self.bias, *arguments, self.groups, self.dilation)
        if self.constant_input:
            ones = x.new_ones((1, 1, *x.shape[-2:]))
            kernel = self.constant_kernel.to(x.dtype)[None]
            y = y + F.conv_transpose2d(ones, kernel, None, *arguments, 1, self.dilation)
        if self.out_width is not None:
            y = _scatter(y, self.out_index, self.out_width, self.out_fill)
        return y


class RemovedLayer(nn.Module):
    """Stands where compression removed a layer that the traced forward pass did not use."""

    def __init__(self, name: str = ""):
        super().__init__()
        self.name = name

    def forward(self, *args, **kwargs):
        raise RuntimeError(
            f"layer '{self.name}' was removed when the network was compressed, because the forward pass it was "
            "compressed with (eval mode) did not use it; a compressed network is for inference"
        )

    def extra_repr(self) -> str:
        return repr(self.name)
