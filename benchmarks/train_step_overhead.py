"""What ACoSP's masks cost per training step of the publication's networks, as a ratio to dense.

    python benchmarks/train_step_overhead.py [--device cpu|cuda] [--pairs 10] [--sizes 129 473 360x480]
                                             [--batch 2] [--networks PSPNet50 SegNet] [--threads N] [--float32]

For PSPNet50 and SegNet at each crop (``S`` for SxS, or ``HxW``): one SGD step (forward with
labels, backward, update) of the dense network, of the same network with soft masks (sparsity
0.75, as during pruning) and with hard masks (as after ``ending_epoch``), taking turns so that all
three see the same machine load, ``--pairs`` times after a warm-up. Prints per row the median step
time, images per second, the median of the per-turn ratios to dense (the mask overhead), and on
CUDA the peak memory of the step (``torch.cuda.max_memory_allocated`` less what the other two
networks hold, so each row reads as if that network trained alone). On CUDA the steps run as
training with ``amp: true`` does: autocast to float16, a gradient scaler, channels_last, with
cudnn.benchmark on as tool/train.py has it; ``--float32`` runs them as ``amp: false`` does instead,
the precision of the memory table in docs/training.md.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from acosp.pruner import SoftTopKPruner
from semseg.models import build_model

NETWORKS = {"PSPNet50": {"arch": "psp", "layers": 50, "classes": 19}, "SegNet": {"arch": "segnet", "classes": 11}}
KINDS = ("dense", "soft", "hard")


def crop_size(text: str) -> tuple[int, int]:
    """'473' -> (473, 473); '360x480' -> (360, 480)."""
    try:
        sides = [int(side) for side in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a crop is S or HxW, got {text!r}") from None
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise argparse.ArgumentTypeError(f"a crop is S or HxW, got {text!r}")
    return (sides[0], sides[-1])


class Step:
    """One network with its optimizer and gradient scaler, stepped as tool/train.py steps it."""

    def __init__(self, model: torch.nn.Module, device: torch.device, amp: bool):
        self.cuda = device.type == "cuda"
        self.amp = amp
        self.model = model.to(device).train()
        if self.amp:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-4, momentum=0.9)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp)
        self.peak_bytes = 0

    def resident_bytes(self) -> int:
        """What this network keeps between steps: weights, buffers, gradients, momentum."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        tensors += [p.grad for p in self.model.parameters() if p.grad is not None]
        tensors += [v for state in self.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def seconds(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            others = torch.cuda.memory_allocated() - self.resident_bytes()  # the other networks (and the batch)
            others -= images.numel() * images.element_size() + labels.numel() * labels.element_size()
        start = time.perf_counter()
        with torch.autocast(images.device.type, dtype=torch.float16, enabled=self.amp):
            _, main_loss, aux_loss = self.model(images, labels)
            loss = main_loss + 0.4 * aux_loss
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.cuda:
            torch.cuda.synchronize()
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated() - others)
        return time.perf_counter() - start


def measure(
    arch: dict, size: tuple[int, int], batch: int, pairs: int, device: torch.device, amp: bool
) -> dict[str, dict]:
    """Per kind: median step seconds, median ratio to dense, peak bytes."""
    torch.manual_seed(0)
    dense = build_model(arch)
    soft = SoftTopKPruner(final_sparsity=0.75).configure_model(copy.deepcopy(dense))
    pruner = SoftTopKPruner(final_sparsity=0.75)
    hard = pruner.on_pruning_end(pruner.configure_model(copy.deepcopy(dense)))
    steps = {kind: Step(model, device, amp) for kind, model in zip(KINDS, (dense, soft, hard))}
    images = torch.randn(batch, 3, *size, device=device)
    if amp:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, arch["classes"], (batch, *size), device=device)
    for step in steps.values():  # warm-up: allocator, cudnn choices, first-call overheads
        step.seconds(images, labels)
        step.seconds(images, labels)
        step.peak_bytes = 0  # cudnn.benchmark tries kernels with large workspaces in the first step
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for _ in range(pairs):
        for kind, step in steps.items():
            times[kind].append(step.seconds(images, labels))
    return {
        kind: {
            "seconds": statistics.median(times[kind]),
            "ratio": statistics.median(t / d for t, d in zip(times[kind], times["dense"])),
            "peak_bytes": steps[kind].peak_bytes,
        }
        for kind in KINDS
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--pairs", type=int, default=10, help="timed turns of all three networks")
    parser.add_argument("--sizes", type=crop_size, nargs="+", default=[(129, 129), (473, 473)], help="S or HxW")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--float32", action="store_true", help="on CUDA, train as amp: false does")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = device.type == "cuda" and not args.float32
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as tool/train.py trains without manual_seed
        where = torch.cuda.get_device_name() + (", AMP float16, channels_last" if amp else ", float32")
    else:
        where = "CPU"
    print(f"{where}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch {args.batch}")
    print("| network | crop | masks | step (s) | images/s | step / dense | peak memory (GiB) |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for name in args.networks:
        for height, width in args.sizes:
            rows = measure(NETWORKS[name], (height, width), args.batch, args.pairs, device, amp)
            for kind, row in rows.items():
                memory = f"{row['peak_bytes'] / 2**30:.2f}" if device.type == "cuda" else "-"
                print(
                    f"| {name} | {height}x{width} | {kind} | {row['seconds']:.4f} | {args.batch / row['seconds']:.1f} "
                    f"| {row['ratio']:.3f} | {memory} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
