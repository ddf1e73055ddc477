"""The ACoSP channel masks: the soft sigmoid top-k mask that is learned, and the hard one it becomes.

A mask layer multiplies the output channels of the conv in front of it. The soft layer derives its
mask from learnable logits on every forward pass (so train and eval always agree with the current
logits and temperature) and keeps a detached copy in the ``mask`` buffer for checkpoints and logs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# The smallest standard deviation used to normalise the logits, so that near-equal logits do not
# blow up into huge normalised values.
MIN_STD = 1e-3


def num_kept_channels(channels: int, sparsity: float, min_remaining_elements: int = 8) -> int:
    """How many of ``channels`` output channels a layer keeps at ``sparsity``.

    ``k = min(C, max(ceil((1 - s) * C), m))``. The product is nudged down by 1e-9 before the ceiling
    so that float error (``(1 - 0.7) * 10 == 3.0000000000000004``) does not keep an extra channel.
    """
    if channels < 1:
        raise ValueError(f"a masked layer needs at least one channel, got {channels}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
    if min_remaining_elements < 0:
        raise ValueError(f"min_remaining_elements must be >= 0, got {min_remaining_elements}")
    wanted = math.ceil((1.0 - sparsity) * channels - 1e-9)
    return min(channels, max(wanted, min_remaining_elements, 1))


def check_round_to(round_to: int) -> None:
    if int(round_to) != round_to or round_to < 1:
        raise ValueError(f"round_to must be a positive integer, got {round_to}")


def rounded_up(k: int, round_to: int, channels: int) -> int:
    """``k`` rounded up to a multiple of ``round_to``, but no more than ``channels``."""
    check_round_to(round_to)
    return min(channels, math.ceil(k / round_to) * int(round_to))


def normalize_logits(logits: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit standard deviation (at least ``MIN_STD``), in float32."""
    logits = logits.float()
    if logits.numel() < 2:
        return logits - logits.mean()
    return (logits - logits.mean()) / logits.std().clamp_min(MIN_STD)


def top_k_threshold(z: torch.Tensor, k: int) -> torch.Tensor:
    """The ``1 - k/C`` quantile of ``z`` (linear interpolation), detached: exactly k values lie above it.

    Computed from the two order statistics it falls between, and kept strictly below the lower of
    the k largest values, which rounding could otherwise reach. (Only a tie of those two order
    statistics, equal values in float32, leaves fewer than k above it; the hard mask still keeps
    exactly k.)
    """
    channels = z.numel()
    ordered = torch.sort(z.detach().flatten()).values
    below, above = ordered[channels - k - 1], ordered[channels - k]
    x0 = below + (k / channels) * (above - below)
    return torch.minimum(x0, torch.nextafter(above, below))


def check_channel_groups(channels: int, k: int, groups: int) -> None:
    """Raise unless ``k`` of ``channels`` can be kept as the same number in each of ``groups`` equal groups."""
    if int(groups) != groups or groups < 1:
        raise ValueError(f"channel groups must be a positive integer, got {groups}")
    if channels % groups or k % groups:
        raise ValueError(f"{channels} channels, {k} kept, do not split evenly into {groups} channel groups")


def sigmoid_soft_top_k(
    logits: torch.Tensor, k: int, tau: float | torch.Tensor, groups: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """The soft top-k mask of ``logits`` at temperature ``tau``: ``(mask, x0)``.

    ``mask = sigmoid((z - x0) / tau)`` with ``z`` the normalised logits and ``x0`` their top-k
    threshold, so exactly ``k`` entries exceed 0.5 and the mask tends to the hard top-k mask as
    ``tau -> 0``. When ``k == C`` every channel is kept: the mask is all ones and ``x0 = -inf``
    (the mask still depends on the logits, with zero gradient, so that DistributedDataParallel
    sees every logit used). With ``groups`` > 1 the channels form that many equal consecutive
    groups (those a grouped conv reads), each its own top ``k / groups``; ``x0`` then has one entry
    per group.
    """
    if logits.dim() != 1:
        raise ValueError(f"logits must be a 1-D tensor of per-channel scores, got shape {tuple(logits.shape)}")
    channels = logits.numel()
    if not 1 <= k <= channels:
        raise ValueError(f"k must lie in [1, {channels}] for {channels} channels, got {k}")
    # A tensor temperature (a layer's buffer) is validated when it is set: checking it here would
    # synchronise with the GPU on every forward pass.
    if not isinstance(tau, torch.Tensor) and not tau > 0:
        raise ValueError(f"the temperature must be positive, got {tau}")
    if groups != 1:
        check_channel_groups(channels, k, groups)
        parts = [sigmoid_soft_top_k(row, k // groups, tau) for row in logits.view(groups, -1)]
        return torch.cat([mask for mask, _ in parts]), torch.stack([x0 for _, x0 in parts])
    z = normalize_logits(logits)
    if k == channels:
        return z * 0.0 + 1.0, z.new_full((), float("-inf"))
    x0 = top_k_threshold(z, k)
    return torch.sigmoid((z - x0) / tau), x0


def _per_channel(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Shape a [C] mask to broadcast over dimension 1 of ``x``, in ``x``'s dtype (so AMP stays in half)."""
    return mask.to(x.dtype).view(1, -1, *([1] * (x.dim() - 2)))


class SigmoidSoftTopK(nn.Module):
    """The learnable soft mask of one conv: logits ``weight``, buffers ``mask`` and ``temperature``."""

    def __init__(
        self, num_channels: int, k: int, learnable_weights: bool = True, temperature: float = 1.0, groups: int = 1
    ):
        super().__init__()
        if not 1 <= k <= num_channels:
            raise ValueError(f"k must lie in [1, {num_channels}] for {num_channels} channels, got {k}")
        check_channel_groups(num_channels, k, groups)
        self.num_channels = num_channels
        self.k = k
        # The channels split into this many equal groups that keep k / groups each: the groups of a
        # grouped conv that reads them (or computes them), so that compression narrows every group alike.
        self.groups = int(groups)
        self.learnable_weights = learnable_weights
        logits = torch.randn(num_channels)
        if learnable_weights:
            self.weight = nn.Parameter(logits)
        else:
            self.register_buffer("weight", logits)
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.register_buffer("mask", torch.ones(num_channels))
        self.refresh_mask()

    def compute_mask(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The mask and threshold of the current logits and temperature (with autograd)."""
        return sigmoid_soft_top_k(self.weight, self.k, self.temperature, self.groups)

    @torch.no_grad()
    def refresh_mask(self) -> None:
        """Bring the ``mask`` buffer up to date with the logits and temperature."""
        self.channel_scale()

    def set_temperature(self, value: float) -> None:
        if not value > 0:
            raise ValueError(f"the temperature must be positive, got {value}")
        self.temperature.fill_(value)
        self.refresh_mask()

    def channel_scale(self) -> torch.Tensor:
        """The mask to apply now (with autograd); the ``mask`` buffer gets a detached copy."""
        mask = self.compute_mask()[0]
        with torch.no_grad():
            self.mask.copy_(mask)
        return mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * _per_channel(self.channel_scale(), x)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # Checkpoints of the original publication's code have no temperature buffer: keep ours.
        has_temperature = prefix + "temperature" in state_dict
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if not has_temperature and prefix + "temperature" in missing_keys:
            missing_keys.remove(prefix + "temperature")
        self.refresh_mask()

    def extra_repr(self) -> str:
        temperature = float(self.temperature)
        groups = f", groups={self.groups}" if self.groups > 1 else ""
        learnable = self.learnable_weights
        return f"{self.num_channels}, k={self.k}{groups}, temperature={temperature:.4g}, learnable={learnable}"


class _KeptChannels(nn.Module):
    """What a binary mask (``self.mask``) keeps: the channels whose value is above 0.5."""

    @property
    def k(self) -> int:
        return int((self.mask > 0.5).sum())

    @property
    def kept(self) -> torch.Tensor:
        """Which channels stay, as a boolean tensor on the CPU, where compression does its bookkeeping."""
        return (self.mask > 0.5).cpu()


class ChannelMask(_KeptChannels):
    """A fixed binary mask over output channels: what a soft mask becomes when pruning ends."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        if mask.dim() != 1:
            raise ValueError(f"a channel mask must be 1-D, got shape {tuple(mask.shape)}")
        self.register_buffer("mask", mask.detach().clone().float())

    @classmethod
    def from_soft(cls, soft: SigmoidSoftTopK, round_to: int = 1, scores: torch.Tensor | None = None) -> ChannelMask:
        """Exactly the ``k`` channels with the largest logits, or ``scores`` if given (ties broken by ``torch.topk``).

        With ``round_to`` > 1, ``k`` is first rounded up to a multiple of it (at most all channels),
        for widths that suit the hardware; the next-best channels fill the difference. A mask over
        channel groups keeps the same number in each group (``k`` rounded up to a multiple of them).
        """
        ranking = (soft.weight if scores is None else scores).detach().float().to(soft.weight.device)
        if ranking.shape != soft.weight.shape:
            raise ValueError(f"{soft.num_channels} channels need as many scores, got shape {tuple(ranking.shape)}")
        groups = getattr(soft, "groups", 1)
        per_group = math.ceil(rounded_up(soft.k, round_to, ranking.numel()) / groups)
        rows = ranking.view(groups, -1)
        mask = torch.zeros_like(rows)
        mask.scatter_(1, torch.topk(rows, per_group, dim=1).indices, 1.0)
        return cls(mask.flatten())

    @property
    def num_channels(self) -> int:
        return self.mask.numel()

    def channel_scale(self) -> torch.Tensor:
        return self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * _per_channel(self.mask, x)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, kept={self.k}"


class GatheredMask(_KeptChannels):
    """The mask of a conv whose output channels are, one by one, channels of another conv's mask: channel i
    is ``source``'s channel ``index[i]``.

    GhostNet's blocks add a shortcut conv's output to a concatenation of two convs that share one mask,
    so shortcut channel i meets that mask's channel ``i % half``; with this mask the shortcut keeps and
    drops exactly the channels the concatenation does, and the sum narrows as much as the convs.
    ``source`` is the other convs' own mask layer (soft, then hard: hardening replaces it here too).
    """

    def __init__(self, source: nn.Module, index: torch.Tensor | list[int]):
        super().__init__()
        index = torch.as_tensor(index, dtype=torch.long, device=source.mask.device)
        if index.dim() != 1 or not len(index) or int(index.min()) < 0 or int(index.max()) >= source.num_channels:
            raise ValueError(f"a gathered mask needs a 1-D index into the {source.num_channels} channels of its source")
        self.source = source
        self.register_buffer("index", index)

    @property
    def num_channels(self) -> int:
        return self.index.numel()

    @property
    def mask(self) -> torch.Tensor:
        """The source's current mask (its detached buffer) at ``index``."""
        return self.source.mask[self.index]

    def channel_scale(self) -> torch.Tensor:
        return self.source.channel_scale()[self.index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * _per_channel(self.channel_scale(), x)

    def extra_repr(self) -> str:
        return f"{self.num_channels} of the {self.source.num_channels} channels of its source"


def is_hard(mask_layer: nn.Module) -> bool:
    """Whether a mask layer is fixed: a ``ChannelMask``, or a ``GatheredMask`` of one."""
    if isinstance(mask_layer, GatheredMask):
        return is_hard(mask_layer.source)
    return isinstance(mask_layer, ChannelMask)
