"""What ACoSP's soft masks cost per training step of the publication's networks, as a ratio to dense.

    python benchmarks/train_step_overhead.py [--device cpu|cuda] [--pairs 10] [--sizes 129 473] [--batch 2]
                                             [--threads N]

For PSPNet50 and SegNet at each crop size: one SGD step (forward with labels, backward, update) of
the dense network and of the same network with soft masks, alternated so that both see the same
machine load, repeated ``--pairs`` times after a warm-up; prints the median step times and the
median of the per-pair ratios. On CUDA the steps run under AMP, as training with ``amp: true`` does.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from acosp.pruner import SoftTopKPruner  # noqa: E402
from model import build_model  # noqa: E402

NETWORKS = {"PSPNet50": {"arch": "psp", "layers": 50, "classes": 19}, "SegNet": {"arch": "segnet", "classes": 11}}


def step_seconds(model, optimizer, images, labels, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
        _, main_loss, aux_loss = model(images, labels)
        loss = main_loss + 0.4 * aux_loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(arch: dict, size: int, batch: int, pairs: int, device: torch.device) -> tuple[float, float, float]:
    torch.manual_seed(0)
    dense = build_model(arch).to(device).train()
    masked = SoftTopKPruner(final_sparsity=0.75).configure_model(copy.deepcopy(dense)).train()
    runs = []
    for model in (dense, masked):
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        runs.append((model, optimizer))
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, arch["classes"], (batch, size, size), device=device)
    for model, optimizer in runs:  # warm-up: allocator, cudnn choices, first-call overheads
        step_seconds(model, optimizer, images, labels, device)
    times = ([], [])
    for _ in range(pairs):
        for which, (model, optimizer) in enumerate(runs):
            times[which].append(step_seconds(model, optimizer, images, labels, device))
    ratios = [m / d for d, m in zip(*times)]
    return statistics.median(times[0]), statistics.median(times[1]), statistics.median(ratios)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--sizes", type=int, nargs="+", default=[129, 473])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print("| network | crop | dense step (s) | masked step (s) | masked / dense (median of pairs) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in args.networks:
        for size in args.sizes:
            dense, masked, ratio = measure(NETWORKS[name], size, args.batch, args.pairs, device)
            print(f"| {name} | {size} | {dense:.3f} | {masked:.3f} | {ratio:.3f} |", flush=True)


if __name__ == "__main__":
    main()
