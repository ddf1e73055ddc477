"""SoftTopKPruner: the schedule a training loop follows (configure, anneal per epoch, harden, log)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from acosp import inject, masks, stats
from acosp.inject import SELECTIONS

_STATE_KEYS = (
    "starting_epoch",
    "ending_epoch",
    "final_sparsity",
    "active",
    "min_remaining_elements",
    "initial_temp",
    "final_temp",
    "learnable_weights",
    "finished",
    "round_to",
    "coupled_masks",
    "selection",
)


def annealed_temperature(
    epoch: float, starting_epoch: int, ending_epoch: int, initial_temp: float, final_temp: float
) -> float:
    """Log-linear interpolation from ``initial_temp`` at ``starting_epoch`` to ``final_temp`` at ``ending_epoch``.

    Constant before the start and after the end; with ``starting_epoch == ending_epoch`` it jumps
    to ``final_temp`` at that epoch.
    """
    if ending_epoch == starting_epoch:
        progress = 1.0 if epoch >= ending_epoch else 0.0
    else:
        progress = min(max((epoch - starting_epoch) / (ending_epoch - starting_epoch), 0.0), 1.0)
    return math.exp(math.log(initial_temp) - progress * (math.log(initial_temp) - math.log(final_temp)))


class SoftTopKPruner:
    """Auto-Compressing Subset Pruning with sigmoid soft top-k channel masks.

    ``configure_model`` masks every prunable conv; call ``update_mask_layers(model, epoch)`` after
    each training epoch to anneal the temperature, and ``acosp.inject.soft_to_hard_k(model)`` (or
    ``on_pruning_end``) when ``epoch == ending_epoch``. With ``selection="l1"`` (the L1-norm
    baseline) the network stays dense until ``on_pruning_end``, which must then be called.
    """

    def __init__(
        self,
        starting_epoch: int = 0,
        ending_epoch: int = 100,
        final_sparsity: float = 0.5,
        active: bool = True,
        min_remaining_elements: int = 8,
        initial_temp: float = 1.0,
        final_temp: float = 0.001,
        learnable_weights: bool = True,
        finished: bool = False,
        round_to: int = 1,
        coupled_masks: bool = False,
        selection: str = "logits",
    ):
        if not 0.0 <= final_sparsity < 1.0:
            raise ValueError(f"final_sparsity must lie in [0, 1), got {final_sparsity}")
        if starting_epoch < 0:
            raise ValueError(f"starting_epoch must be >= 0, got {starting_epoch}")
        if ending_epoch < starting_epoch:
            raise ValueError(f"ending_epoch ({ending_epoch}) must not come before starting_epoch ({starting_epoch})")
        if not (initial_temp > 0 and final_temp > 0):
            raise ValueError(f"temperatures must be positive, got initial_temp={initial_temp}, final_temp={final_temp}")
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
        if int(min_remaining_elements) != min_remaining_elements or min_remaining_elements < 0:
            raise ValueError(f"min_remaining_elements must be a non-negative integer, got {min_remaining_elements}")
        self.starting_epoch = int(starting_epoch)
        self.ending_epoch = int(ending_epoch)
        self.final_sparsity = float(final_sparsity)
        self.active = bool(active)
        self.min_remaining_elements = int(min_remaining_elements)
        self.initial_temp = float(initial_temp)
        self.final_temp = float(final_temp)
        self.learnable_weights = bool(learnable_weights)
        # Set by on_pruning_end, so that a pruner restored from a checkpoint prepares hard masks.
        self.finished = bool(finished)
        # Hard masks keep k rounded up to a multiple of this (see acosp.inject.soft_to_hard_k).
        masks.rounded_up(1, round_to, 1)
        self.round_to = int(round_to)
        # Convs whose outputs are summed share one mask (acosp.compress.coupled_groups): residual streams narrow too.
        self.coupled_masks = bool(coupled_masks)
        self.selection = selection
        self._groups: list[list[str]] = []  # the coupled groups configure_model found, for on_pruning_end
        self._channel_groups: dict[str, int] = {}  # and the masks to keep even over a grouped conv's groups

    @property
    def adds_masks(self) -> bool:
        """Whether ``configure_model`` masks the network: not for a dense run (inactive, never finished),
        nor for L1 selection before pruning ends (the network trains dense until then)."""
        return self.finished or (self.active and self.selection == "logits")

    def temperature(self, epoch: float) -> float:
        """The temperature the masks get after training epoch ``epoch``."""
        return annealed_temperature(epoch, self.starting_epoch, self.ending_epoch, self.initial_temp, self.final_temp)

    def configure_model(self, model: nn.Module, example_input: torch.Tensor | tuple | None = None) -> nn.Module:
        """Add a soft mask to every prunable conv (in place); returns the model (a new wrapper for DDP).

        A no-op for an inactive pruner (a dense run); after ``on_pruning_end`` (a pruner restored
        from a checkpoint, say) the masks are added already hardened, ready for the checkpoint.
        With ``example_input`` (what the network is called with, on its device) the network runs
        once to find the convs whose outputs feed a grouped conv: their masks, and the grouped
        conv's own, keep as many channels in each of its groups (``acosp.compress.balanced_groups``),
        so that compression narrows it group by group; without it only the grouped convs' own
        masks do. With ``coupled_masks`` that run also finds the convs whose outputs are combined
        channel by channel; each such group gets one mask.
        """
        if not (self.active or self.finished):
            return model
        if self.coupled_masks and example_input is None:
            raise ValueError(
                "coupled_masks=True finds the convs that share a mask by running the network once: "
                "call configure_model(model, example_input) with an input the network accepts"
            )
        if example_input is not None:
            from acosp.compression.coupling import mask_constraints  # the compression layer traces the network

            groups, self._channel_groups = mask_constraints(model, example_input)
        else:
            groups, self._channel_groups = [], inject.grouped_conv_groups(model)
        self._groups = [list(group) for group in groups] if self.coupled_masks else []
        if not self.adds_masks:
            return model  # L1 selection: the masks come when pruning ends
        model = self._inject(model)
        return inject.soft_to_hard_k(model, self.round_to, self.selection) if self.finished else model

    def _inject(self, model: nn.Module) -> nn.Module:
        return inject.inject_soft_masks(
            model,
            self.final_sparsity,
            min_remaining_elements=self.min_remaining_elements,
            learnable_weights=self.learnable_weights and self.selection == "logits",
            temperature=self.initial_temp,
            groups=self._groups,
            channel_groups=self._channel_groups,
        )

    def update_mask_layers(self, model: nn.Module, epoch: int) -> None:
        """Set every soft mask to the temperature of ``epoch``."""
        if not self.active:
            return
        temperature = self.temperature(epoch)
        for mask in inject.soft_masks(model):
            mask.set_temperature(temperature)

    def on_pruning_end(self, model: nn.Module) -> nn.Module:
        """Harden the masks and stop pruning; returns the model (a new wrapper for DDP).

        With L1 selection the dense network gets its masks here, each keeping the k filters of
        largest L1 norm.
        """
        if self.selection == "l1":
            model = self._inject(model)
        model = inject.soft_to_hard_k(model, self.round_to, self.selection)
        self.active = False
        self.finished = True
        return model

    def collect_logs(self, writer: Any, model: nn.Module, step: int) -> dict[str, float]:
        """Write the pruning statistics with ``writer.add_scalar(tag, value, step)`` and return them.

        ``writer`` may be None to only compute them; see ``acosp.stats.mask_statistics``.
        """
        logs = stats.mask_statistics(model)
        if writer is not None:
            for tag, value in logs.items():
                writer.add_scalar(tag, value, step)
        return logs

    def state_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in _STATE_KEYS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = {"finished": False, "round_to": 1, "coupled_masks": False, "selection": "logits", **state}
        missing = [key for key in _STATE_KEYS if key not in state]
        unknown = [key for key in state if key not in _STATE_KEYS]
        if missing or unknown:
            raise ValueError(f"not a SoftTopKPruner state: missing keys {missing}, unknown keys {unknown}")
        found = self._groups, self._channel_groups
        restored = SoftTopKPruner(**state)
        self.__dict__.update(restored.__dict__)
        self._groups, self._channel_groups = found

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={getattr(self, key)!r}" for key in _STATE_KEYS)
        return f"SoftTopKPruner({settings})"
