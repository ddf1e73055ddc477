"""How long a network takes for one forward pass: the median of repeated timed runs, after warm-up."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn


def _synchronize(args: tuple) -> None:
    if any(isinstance(arg, torch.Tensor) and arg.is_cuda for arg in args):
        torch.cuda.synchronize()


def median_latencies(models: dict[str, nn.Module], example_input: Any, runs: int = 10, warmup: int = 3) -> dict:
    """Median seconds of ``model(example_input)`` per model, in eval mode under ``torch.inference_mode``.

    The models take turns run by run, so that a change in the machine's load hits all of them
    alike. The first ``warmup`` runs (allocator, kernel selection) are not timed.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    modes = {name: model.training for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    try:
        with torch.inference_mode():
            for step in range(warmup + runs):
                for name, model in models.items():
                    model.eval()
                    _synchronize(args)
                    start = time.perf_counter()
                    model(*args)
                    _synchronize(args)
                    if step >= warmup:
                        times[name].append(time.perf_counter() - start)
    finally:
        for name, model in models.items():
            model.train(modes[name])
    return {name: statistics.median(values) for name, values in times.items()}


def median_latency(model: nn.Module, example_input: Any, runs: int = 10, warmup: int = 3) -> float:
    """Median seconds of one model's forward pass (see ``median_latencies``)."""
    return median_latencies({"model": model}, example_input, runs, warmup)["model"]
