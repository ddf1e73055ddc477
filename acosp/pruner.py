"""SoftTopKPruner: the schedule a training loop follows (configure, step after every epoch, log).

One lifecycle: ``configure_model`` masks the network, ``step(model, epoch)`` before each training
epoch anneals the masks and hardens them when pruning ends, recording it (``finished``) so that a
pruner restored from a checkpoint prepares hard masks. ``update_mask_layers`` (anneal) and
``on_pruning_end`` (harden) are its two halves, the publication's calls.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from acosp import inject, masks, stats
from acosp.inject import SELECTIONS


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


@dataclasses.dataclass
class SoftTopKPruner:
    """Auto-Compressing Subset Pruning with sigmoid soft top-k channel masks.

    ``configure_model`` masks every prunable conv; call ``model = step(model, epoch)`` before each
    training epoch: it anneals the temperature and, from ``ending_epoch`` on, hardens the masks.
    With ``selection="l1"`` (the L1-norm baseline) the network stays dense until then. Its fields
    are its state (``state_dict``), saved with checkpoints.
    """

    starting_epoch: int = 0
    ending_epoch: int = 100
    final_sparsity: float = 0.5
    active: bool = True  # False: a dense run, nothing is masked
    min_remaining_elements: int = 8
    initial_temp: float = 1.0
    final_temp: float = 0.001
    learnable_weights: bool = True
    finished: bool = False  # pruning has ended: configure_model adds hard masks
    round_to: int = 1  # hard masks keep k rounded up to a multiple of this (acosp.inject.soft_to_hard_k)
    coupled_masks: bool = False  # convs whose outputs are summed share one mask: residual streams narrow too
    selection: str = "logits"
    # With an example input, configure_model masks the output features of the linear layers whose
    # features can leave the network too (acosp.compress.maskable_linears: the hidden features of MLPs).
    linear_masks: bool = True
    # What configure_model found by running the network, for on_pruning_end: the coupled groups, the
    # masks to keep even over a grouped conv's groups and the gathered masks. Not state: found again on
    # every configure.
    _groups: list = dataclasses.field(default_factory=list, init=False, repr=False, compare=False)
    _channel_groups: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)
    _gathered: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)
    _linears: list = dataclasses.field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.final_sparsity < 1.0:
            raise ValueError(f"final_sparsity must lie in [0, 1), got {self.final_sparsity}")
        if self.starting_epoch < 0:
            raise ValueError(f"starting_epoch must be >= 0, got {self.starting_epoch}")
        if self.ending_epoch < self.starting_epoch:
            raise ValueError(
                f"ending_epoch ({self.ending_epoch}) must not come before starting_epoch ({self.starting_epoch})"
            )
        if not (self.initial_temp > 0 and self.final_temp > 0):
            raise ValueError(
                f"temperatures must be positive, got initial_temp={self.initial_temp}, final_temp={self.final_temp}"
            )
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")
        remaining = self.min_remaining_elements
        if int(remaining) != remaining or remaining < 0:
            raise ValueError(f"min_remaining_elements must be a non-negative integer, got {remaining}")
        masks.check_round_to(self.round_to)
        for name, kind in (("starting_epoch", int), ("ending_epoch", int), ("final_sparsity", float)):
            setattr(self, name, kind(getattr(self, name)))
        for name in ("active", "learnable_weights", "finished", "coupled_masks", "linear_masks"):
            setattr(self, name, bool(getattr(self, name)))
        self.min_remaining_elements, self.round_to = int(remaining), int(self.round_to)
        self.initial_temp, self.final_temp = float(self.initial_temp), float(self.final_temp)

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
        channel by channel; each such group gets one mask, and a conv whose channels are channels of
        another group gets that group's mask at those channels (``acosp.compress.gathered_masks``).
        With ``linear_masks`` that run also finds the linear layers whose output features can leave
        (``acosp.compress.maskable_linears``, the hidden features of MLPs): they get masks too.
        """
        if not (self.active or self.finished):
            return model
        if self.coupled_masks and example_input is None:
            raise ValueError(
                "coupled_masks=True finds the convs that share a mask by running the network once: "
                "call configure_model(model, example_input) with an input the network accepts"
            )
        if example_input is not None:
            from acosp.compression.coupling import mask_plan  # the compression layer traces the network

            plan = mask_plan(model, example_input, gathered=self.coupled_masks, linears=self.linear_masks)
        else:  # only the grouped convs' own masks keep their channels even over the groups
            plan = {"groups": [], "balanced": inject.grouped_conv_groups(model), "gathered": {}, "linears": []}
        self._groups = [list(group) for group in plan["groups"]] if self.coupled_masks else []
        self._channel_groups, self._gathered, self._linears = plan["balanced"], plan["gathered"], plan["linears"]
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
            gathered=self._gathered,
            linears=self._linears,
        )

    def step(self, model: nn.Module, epoch: int, last: bool = False) -> nn.Module:
        """The masks for training epoch ``epoch`` (0-based): call it before each epoch.

        Anneals every soft mask to the temperature the previous epoch ended on,
        ``temperature(epoch - 1)``; from ``ending_epoch`` on, hardens them (``on_pruning_end``),
        once. ``last=True`` after the last epoch (``epoch`` = the number of epochs) hardens them
        even where training ends before pruning does. Returns the model (a new wrapper for DDP).
        A no-op once pruning has ended, and for a dense run.
        """
        if not self.active:
            return model
        self.update_mask_layers(model, epoch - 1)
        if epoch >= self.ending_epoch or last:
            model = self.on_pruning_end(model)
        return model

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
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self) if field.init}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take the settings of ``state``; keys that older checkpoints lack take their defaults."""
        known = [field.name for field in dataclasses.fields(self) if field.init]
        defaults = {field.name for field in dataclasses.fields(self) if field.init and field.name in _ADDED_LATER}
        missing = [key for key in known if key not in state and key not in defaults]
        unknown = [key for key in state if key not in known]
        if missing or unknown:
            raise ValueError(f"not a SoftTopKPruner state: missing keys {missing}, unknown keys {unknown}")
        restored = SoftTopKPruner(**{**_EARLIER_BEHAVIOUR, **state})
        for key in known:
            setattr(self, key, getattr(restored, key))


# Settings that checkpoints of earlier versions lack: they load with the defaults.
_ADDED_LATER = ("finished", "round_to", "coupled_masks", "selection", "linear_masks")
# Settings whose default changed with them: a checkpoint that lacks them was made with this value.
_EARLIER_BEHAVIOUR = {"linear_masks": False}
