"""Estimate the GPU memory a training step needs, measured on the CPU: no GPU required.

    python benchmarks/training_memory.py config/cityscapes/cityscapes_pspnet50_0.75.yaml [--batch 2]

Runs one forward pass of two training crops (train_h x train_w) with the loss, and adds up the
tensors autograd keeps for the backward pass (each storage once): half of it is the activation
memory per image.
The parameters add their weights, gradients and optimizer state (momentum for SGD, two moments for
Adam). GPU memory of a step is about  state + batch per GPU x activations, plus what this does not
see: cuDNN workspaces, the allocator's fragmentation and the CUDA context (typically 0.3-1 GiB).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from acosp import SoftTopKPruner
from semseg.config import load_config
from semseg.models import build_model, describe_arch

GIB = 2**30


def activation_bytes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves for backward during ``model(x, y)``."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        _, main_loss, aux_loss = model(x, y)
    del main_loss, aux_loss
    return sum(size for pointer, size in seen.items() if pointer not in parameters)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4, 8], help="images per GPU to show")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY VALUE", help="config overrides")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    cfg.pretrained_weights = None  # the size does not depend on the weights
    model = build_model(describe_arch(cfg))  # the shapes count, not ImageNet weights
    if cfg.sparsity > 0:  # soft masks: the pruning phase, when masks add their own activations
        SoftTopKPruner(0, cfg.ending_epoch, cfg.sparsity, cfg.min_remaining_elements).configure_model(model)
    model.train()
    # Two images: BatchNorm in training needs more than one value per channel (PSPNet's 1x1 pooling).
    x = torch.randn(2, 3, cfg.train_h, cfg.train_w)
    y = torch.randint(0, cfg.classes, (2, cfg.train_h, cfg.train_w))
    activations = activation_bytes(model, x, y) // 2
    parameters = sum(p.numel() for p in model.parameters())
    copies = 4 if cfg.optimizer == "adam" else 3  # weights, gradients, and one or two optimizer moments
    state = parameters * 4 * copies
    print(f"{args.config}: {cfg.arch}, crop {cfg.train_h}x{cfg.train_w}, sparsity {cfg.sparsity:g}, float32")
    print(f"parameters {parameters:,}: {state / GIB:.2f} GiB with gradients and {cfg.optimizer} state")
    print(f"activations kept for backward: {activations / GIB:.2f} GiB per image")
    for batch in args.batch:
        print(f"  {batch} image(s) per GPU: about {(state + batch * activations) / GIB:.1f} GiB + CUDA overhead")
    return 0


if __name__ == "__main__":
    sys.exit(main())
