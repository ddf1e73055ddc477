"""The layers a compressed network is made of, where plain ``nn.Conv2d`` and friends do not suffice.

A narrowed conv may have to

- fold the pruned channels of its input, which are constants, into its output: exact in the bias
  where every tap of the kernel sees the image, plus a correction on the border rows and columns
  where taps fall on the zero padding (``constant_kernel`` holds the summed constant per tap);
- write its computed channels into a wider tensor (``out_index`` into ``out_width`` channels),
  when the residual sum it feeds keeps channels that other branches computed, or later layers
  need a pruned channel's constant (SegNet's unpooling, with coupled masks);
- read only some channels of the tensor it receives (``in_index`` of ``in_width``), when that
  tensor keeps constant channels at full width for another layer (a split by fixed sizes, say):
  the constants are folded like pruned ones.

Both kinds hold the conv itself as a plain ``nn.Conv2d`` / ``nn.ConvTranspose2d`` (``.conv``), so
that tools which recognise layers by their exact type count and quantise it.

``RemovedLayer`` stands where the traced forward pass never called a layer (PSPNet's auxiliary
head in eval mode), so that a compressed checkpoint does not carry its weights.
"""

from __future__ import annotations

import itertools

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


def border_terms(
    input_size: tuple[int, int], output_size: tuple[int, int], kernel: torch.Tensor, conv: nn.Conv2d, dtype: torch.dtype
) -> list[tuple[tuple[slice, slice], torch.Tensor]]:
    """What constant input channels give at the border beyond their interior value: ``[(region, addend)]``.

    ``kernel[o, i, j]`` is the constant channels' summed contribution through tap (i, j); the
    interior value ``kernel[o].sum()`` is already in the bias. At an output position whose taps
    partly fall on zero padding only the taps on the image count. Validity is separable, so only
    the border rows and columns need an addend: at most four regions (top, bottom, and left and
    right between them), each with a tensor that broadcasts over the batch.
    """
    kernel_h, kernel_w = conv.kernel_size
    if isinstance(conv, SamePaddedConv2d):
        pad_h, _, pad_w, _ = conv.same_padding(input_size)
    elif isinstance(conv.padding, str):  # 'same': the smaller half of the padding comes first
        pad_h = conv.dilation[0] * (kernel_h - 1) // 2
        pad_w = conv.dilation[1] * (kernel_w - 1) // 2
    else:
        pad_h, pad_w = conv.padding
    height, width = output_size
    row_geometry = (input_size[0], height, kernel_h, conv.stride[0], pad_h, conv.dilation[0])
    col_geometry = (input_size[1], width, kernel_w, conv.stride[1], pad_w, conv.dilation[1])
    top, bottom = _edge_counts(*row_geometry)
    left, right = _edge_counts(*col_geometry)
    terms: list[tuple[tuple[slice, slice], torch.Tensor]] = []
    if not (top or bottom or left or right):
        return terms
    kernel = kernel.double()
    rows = _validity(*row_geometry).to(kernel)
    cols = _validity(*col_geometry).to(kernel)
    interior = kernel.sum((1, 2))
    if top or bottom:
        edge_rows = torch.cat([rows[:top], rows[height - bottom :]])
        correction = (torch.einsum("yi,oij,xj->oyx", edge_rows, kernel, cols) - interior[:, None, None]).to(dtype)
        if top:
            terms.append(((slice(0, top), slice(None)), correction[:, :top].contiguous()))
        if bottom:
            terms.append(((slice(height - bottom, height), slice(None)), correction[:, top:].contiguous()))
    if (left or right) and top + bottom < height:
        correction = (torch.einsum("oij,xj->ox", kernel, cols) - interior[:, None]).to(dtype)
        middle = slice(top, height - bottom)
        if left:
            terms.append(((middle, slice(0, left)), correction[:, None, :left].contiguous()))
        if right:
            terms.append(((middle, slice(width - right, width)), correction[:, None, width - right :].contiguous()))
    return terms


def _scatter(output: torch.Tensor, index: torch.Tensor, width: int, fill: torch.Tensor | None) -> torch.Tensor:
    """The computed channels placed at ``index`` of ``width`` channels; the others are 0, as masked.

    With a BatchNorm folded into the conv, the others are what it makes of 0: ``fill``.
    """
    shape = (output.shape[0], width, *output.shape[2:])
    full = torch.empty(shape, dtype=output.dtype, device=output.device, memory_format=_memory_format(output))
    if fill is None:
        full.zero_()
    else:
        full.copy_(fill.to(output.dtype).view(1, width, *[1] * (output.dim() - 2)).expand(shape))
    return full.index_copy_(1, index, output)  # in place: one pass less over the wide tensor


# Up to this many runs of computed and of other channels, the wider tensor is one concatenation of
# the runs (one pass that writes it); with more (channels kept at random through a residual stream)
# a fill and one indexed copy cost less than that many small copies.
_MAX_RUNS = 8


def channel_runs(index: torch.Tensor, width: int) -> list[tuple[bool, int, int]]:
    """``[(computed, start, stop)]``: the runs of ``width`` channels, computed (at ``index``, increasing) or not.

    For a computed run, start and stop count the computed channels; for the others, the wide tensor's.
    """
    computed = torch.zeros(width, dtype=torch.bool)
    computed[index.cpu()] = True
    runs, position, taken = [], 0, 0
    for is_computed, group in itertools.groupby(computed.tolist()):
        length = len(list(group))
        start = taken if is_computed else position
        runs.append((is_computed, start, start + length))
        position += length
        taken += length if is_computed else 0
    return runs


def _concatenate(output: torch.Tensor, runs: list, width: int) -> torch.Tensor:
    """The wider tensor as one concatenation of slices of ``output`` and expanded constants."""
    batch, _, *spatial = output.shape
    parts = [
        output[:, piece[0] : piece[1]] if isinstance(piece, tuple) else piece.expand(batch, -1, *spatial)
        for piece in runs
    ]
    if torch.is_grad_enabled() and output.requires_grad:  # cat(out=) does not differentiate
        return torch.cat(parts, 1).contiguous(memory_format=_memory_format(output))
    full = torch.empty(
        (batch, width, *spatial), dtype=output.dtype, device=output.device, memory_format=_memory_format(output)
    )
    return torch.cat(parts, 1, out=full)


def _memory_format(tensor: torch.Tensor) -> torch.memory_format:
    if tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last) and not tensor.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def to_memory_format(network: nn.Module, memory_format: torch.memory_format) -> nn.Module:
    """``network`` (in place) with its 4-D parameters and buffers in ``memory_format``.

    ``Module.to(memory_format=...)`` converts 5-D tensors too, and channels-last cannot hold them
    (the Conv3d of LambdaNet's position lambdas); they stay as they are.
    """
    return network._apply(lambda t: t.contiguous(memory_format=memory_format) if t.dim() == 4 else t)


def tensorflow_same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding along one axis: ``ceil(size / stride)`` outputs, the smaller half first."""
    total = max((-(-size // stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class SamePaddedConv2d(nn.Conv2d):
    """A conv with TensorFlow's 'same' padding, which depends on the size of each input (for a strided
    conv, on its parity): compression narrows timm's ``Conv2dSame`` (the strided convs of the ``tf_``
    EfficientNets) into one of these, since ``nn.Conv2d`` pads the same amount at every size.

    The padding of the constructor must be 0: the layer pads by itself.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.padding != (0, 0) or self.padding_mode != "zeros":
            raise ValueError(
                f"SamePaddedConv2d pads by itself (TensorFlow's 'same', with zeros): padding must be 0 and "
                f"padding_mode 'zeros', not {self.padding!r} and {self.padding_mode!r}"
            )

    def same_padding(self, input_size: tuple[int, int]) -> tuple[int, int, int, int]:
        """``(top, bottom, left, right)`` for an input of ``input_size`` (height, width)."""
        rows = tensorflow_same_padding(input_size[0], self.kernel_size[0], self.stride[0], self.dilation[0])
        cols = tensorflow_same_padding(input_size[1], self.kernel_size[1], self.stride[1], self.dilation[1])
        return (*rows, *cols)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom, left, right = self.same_padding(tuple(x.shape[-2:]))
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return self._conv_forward(x, self.weight, self.bias)


class _CompressedConv(nn.Module):
    """A plain conv (``self.conv``) and what compression adds around it: the border correction for
    constant input channels, and the wider output its channels are written into.

    The conv stays a standard ``nn.Conv2d`` / ``nn.ConvTranspose2d``, so profilers, MAC counters,
    quantisers and exporters see the layer that does the work; the additions cost no MACs. The
    buffers are filled by ``acosp.compress``.
    """

    unprunable = True  # a mask on its outputs would not match ``out_width``
    conv_type: type[nn.Module] = nn.Conv2d

    def __init__(
        self,
        *args,
        out_width: int | None = None,
        constant_input: bool = False,
        filled: bool = False,
        in_width: int | None = None,
        same_padding: bool = False,
        **kwargs,
    ):
        super().__init__()
        self.conv = (SamePaddedConv2d if same_padding else self.conv_type)(*args, **kwargs)
        self.conv.unprunable = True
        self.out_width = out_width
        self.constant_input = constant_input
        self.in_width = in_width
        self.register_buffer(
            "in_index", torch.zeros(self.conv.in_channels, dtype=torch.long) if in_width is not None else None
        )
        out_channels = self.conv.out_channels
        self.register_buffer(
            "out_index", torch.zeros(out_channels, dtype=torch.long) if out_width is not None else None
        )
        self.register_buffer("out_fill", torch.zeros(out_width) if out_width is not None and filled else None)
        kernel = torch.zeros(out_channels, *self.conv.kernel_size) if constant_input else None
        self.register_buffer("constant_kernel", kernel)
        self._cache: dict = {}

    def __getattr__(self, name: str):
        if name in _CONV_ATTRIBUTES:  # read like the conv it wraps: in_channels, weight, ...
            return getattr(self._modules["conv"], name)
        return super().__getattr__(name)

    def _apply(self, fn, recurse=True):
        self._cache = {}  # device, dtype or values may change
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._cache = {}
        for key in ("weight", "bias"):  # compressed checkpoints from when this layer was the conv itself
            if prefix + key in state_dict and prefix + "conv." + key not in state_dict:
                state_dict[prefix + "conv." + key] = state_dict.pop(prefix + key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _wider(self, y: torch.Tensor) -> torch.Tensor:
        if self.out_width is None:
            return y
        runs = self._runs(y)
        if runs is None:
            return _scatter(y, self.out_index, self.out_width, self.out_fill)
        return _concatenate(y, runs, self.out_width)

    def _runs(self, y: torch.Tensor) -> list | None:
        """The pieces of the wider tensor, or None where they are too many; once per dtype and device.

        A piece is a ``(start, stop)`` slice of the computed channels or a ``[1, n, 1, 1]`` tensor of
        the values of n other channels. A tracer or compiler that records the forward pass before any
        eager call records the indexed copy (finding the runs reads the index as Python numbers).
        """
        key = ("runs", y.dtype, y.device, y.dim())
        if key in self._cache:
            return self._cache[key]
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return None
        runs = channel_runs(self.out_index, self.out_width)
        pieces = None
        if len(runs) <= _MAX_RUNS:
            fill = self.out_fill if self.out_fill is not None else y.new_zeros(self.out_width)
            fill = fill.to(y.dtype).view(1, -1, *[1] * (y.dim() - 2))
            pieces = [(start, stop) if computed else fill[:, start:stop] for computed, start, stop in runs]
        self._cache[key] = pieces
        return pieces

    def _read(self, x: torch.Tensor) -> torch.Tensor:
        """The channels the conv reads; a channels-last tensor is gathered as rows of channels, which
        keeps it channels-last and costs a fraction of ``index_select`` along its strided channel axis."""
        if self.in_index is None:
            return x
        if x.dim() == 4 and _memory_format(x) is torch.channels_last:
            batch, channels, height, width = x.shape
            rows = x.permute(0, 2, 3, 1).reshape(-1, channels).index_select(1, self.in_index)
            return rows.view(batch, height, width, -1).permute(0, 3, 1, 2)
        return x.index_select(1, self.in_index)

    def extra_repr(self) -> str:
        text = [] if self.in_width is None else [f"in_width={self.in_width}"]
        if self.out_width is not None:
            text.append(f"out_width={self.out_width}")
        if self.constant_input:
            text.append("constant_input=True")
        if self.out_fill is not None:
            text.append("filled=True")
        return ", ".join(text)


_CONV_ATTRIBUTES = frozenset(
    ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")
    + ("output_padding", "weight", "bias", "transposed")
)


class CompressedConv2d(_CompressedConv):
    """A narrowed conv that folds constant input channels exactly, may read only some channels of its
    input and may write into a wider tensor."""

    conv_type = nn.Conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._read(x)
        y = self.conv(x)
        if self.constant_input:
            for (rows, cols), addend in self._border(tuple(x.shape[-2:]), y):
                y[:, :, rows, cols] += addend
        return self._wider(y)

    def _border(self, input_size: tuple[int, int], y: torch.Tensor) -> list:
        """The border terms for this input size, computed once per size (a few tensors of border size).

        While a tracer or compiler records the forward pass they are computed in it, not cached.
        """
        key = (input_size, tuple(y.shape[-2:]), y.dtype, y.device)
        recording = torch.jit.is_tracing() or torch.compiler.is_compiling()
        terms = None if recording else self._cache.get(key)
        if terms is None:
            terms = border_terms(input_size, key[1], self.constant_kernel, self.conv, y.dtype)
            terms = [(region, addend.to(y.device)) for region, addend in terms]
            if not recording:
                self._cache[key] = terms
        return terms


class CompressedConvTranspose2d(_CompressedConv):
    """A narrowed transposed conv; constant input channels add their (periodic) map to the output."""

    conv_type = nn.ConvTranspose2d

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        x = self._read(x)
        y = self.conv(x, output_size)
        if self.constant_input:
            conv = self.conv
            output_padding = conv._output_padding(
                x, output_size, conv.stride, conv.padding, conv.kernel_size, 2, conv.dilation
            )
            arguments = (conv.stride, conv.padding, output_padding)
            ones = x.new_ones((1, 1, *x.shape[-2:]))
            kernel = self.constant_kernel.to(x.dtype)[None]
            y = y + F.conv_transpose2d(ones, kernel, None, *arguments, 1, conv.dilation)
        return self._wider(y)


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
