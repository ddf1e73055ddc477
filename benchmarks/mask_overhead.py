"""How much the ACoSP masks cost per training step, relative to the same network without them.

    python benchmarks/mask_overhead.py [--device cpu|cuda] [--steps 20] [--batch 8] [--size 64]

Times forward + backward + SGD step of a VGG-style network (BatchNorm after every conv) dense, with
soft masks, and with hard masks, and prints the median step times, the memory autograd keeps for
the backward pass, and their ratios to dense. "literal" rows multiply the conv output by the mask
(``mask_layer(conv(x))``) instead of scaling the filters, for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import acosp.inject
from acosp.pruner import SoftTopKPruner

WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512)


def make_network(classes: int = 10) -> nn.Module:
    layers: list[nn.Module] = []
    channels = 3
    for index, width in enumerate(WIDTHS):
        stride = 2 if index in (2, 4, 7) else 1
        layers += [nn.Conv2d(channels, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        channels = width
    layers.append(acosp.inject.UnprunableConv2d(channels, classes, 1))
    return nn.Sequential(*layers)


def literal_masking(model: nn.Module) -> nn.Module:
    """Make every masked conv take the literal route (a hook on the conv disables the filter scaling)."""
    for module in model.modules():
        if isinstance(module, acosp.inject.MaskedConv):
            module.conv.register_forward_pre_hook(lambda module, args: None)
    return model


def saved_for_backward_bytes(model: nn.Module, images: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps between forward and backward (each storage once)."""
    storages = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(images).square().mean()
    loss.backward()
    return sum(storages.values())


def median_step_seconds(models: dict[str, nn.Module], images: torch.Tensor, steps: int) -> dict[str, float]:
    """Median time of one training step per model, the models taking turns so that load spikes hit all alike."""
    optimizers = {name: torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) for name, model in models.items()}
    timings: dict[str, list[float]] = {name: [] for name in models}
    for step in range(steps + 3):  # the first steps warm up allocators and kernels
        for name, model in models.items():
            if images.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            optimizers[name].zero_grad()
            model(images).square().mean().backward()
            optimizers[name].step()
            if images.is_cuda:
                torch.cuda.synchronize()
            if step >= 3:
                timings[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)

    def pruned(hard: bool) -> nn.Module:
        model = SoftTopKPruner(final_sparsity=0.75).configure_model(make_network().to(device))
        return acosp.inject.soft_to_hard_k(model) if hard else model

    models = {
        "dense": make_network().to(device),
        "soft": pruned(hard=False),
        "soft literal": literal_masking(pruned(hard=False)),
        "hard": pruned(hard=True),
        "hard literal": literal_masking(pruned(hard=True)),
    }
    print(
        f"device {device}, batch {args.batch}, input {args.size}x{args.size}, {len(WIDTHS)} masked convs, "
        f"median of {args.steps} steps (torch {torch.__version__}, {torch.get_num_threads()} threads)"
    )
    seconds = median_step_seconds(models, images, args.steps)
    saved = {name: saved_for_backward_bytes(model, images) for name, model in models.items()}
    print(f"{'masks':<13} {'ms/step':>9} {'time/dense':>11} {'saved MB':>9} {'memory/dense':>13}")
    for name in models:
        print(
            f"{name:<13} {seconds[name] * 1000:9.2f} {seconds[name] / seconds['dense']:11.3f} "
            f"{saved[name] / 2**20:9.1f} {saved[name] / saved['dense']:13.3f}"
        )


if __name__ == "__main__":
    main()
