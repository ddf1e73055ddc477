"""How much smaller and faster compression makes PSPNet50 and SegNet, dense and at the publication's sparsities.

    python benchmarks/compress_speed.py [--runs 5] [--warmup 2] [--threads N] [--round-to 8] [--coupled]
                                        [--contiguous] [--vs-torch-pruning] [--device cuda] [--half]
                                        [--batch 8] [--profile] [--quick]

For PSPNet50 at 473x473 and SegNet at 360x480 (batch 1 unless --batch, torch.inference_mode, CPU
unless --device cuda), dense and at sparsity 0.5, 0.75, 0.875 and 0.9375, with random hard masks and BatchNorm
statistics as after training (there are no trained weights here): parameters and MACs of the
masked and the compressed network, and median latencies of the dense network, the masked one
and the compressed one, taking turns. "speedup" is dense latency / compressed latency;
"of MACs" is that speedup divided by the MAC reduction; "error" is max |compressed - masked| /
max |masked| on the benchmark input (where float32 rounding flips a max-pooling near-tie that
SegNet unpools, the error in float64 follows); "noise" is the same measure between the masked
network and itself run in channels_last memory format: what a mere change of summation order
does to this network in float32 (for SegNet, of the order of "error"). --profile adds, per
compressed network, the share of time by operation, which shows where the work that does not
shrink takes over.
--coupled gives the convs that add into one residual stream (and SegNet's encoder/decoder pairs that
share unpooling indices) one mask (SoftTopKPruner(coupled_masks=True)), so the streams narrow too.
--contiguous keeps the compressed network in contiguous memory format (compress(channels_last=False));
by default, on the CPU, its filters and tensors are channels-last.
--vs-torch-pruning (with --coupled; needs `pip install torch-pruning`) adds, per sparsity, a row for
the same channels removed by Torch-Pruning: its latency, its error against the removal it claims
(the channels zeroed after their BatchNorm) and, in the last column, against the masked network,
whose pruned channels are constants after BatchNorm (what ACoSP trained).
--quick is a smoke test on tiny inputs.
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from collections import defaultdict

import torch
import torch_pruning_peer  # beside this script: run as python benchmarks/compress_speed.py
from torch import nn

from acosp.compress import compress, compression_spec, model_statistics, relative_error
from acosp.pruner import SoftTopKPruner
from semseg.models import build_model
from semseg.reporting.latency import median_latencies

SPARSITIES = (0.5, 0.75, 0.875, 0.9375)
NETWORKS = {
    "PSPNet50": ({"arch": "psp", "layers": 50, "classes": 21}, (473, 473), (33, 33)),
    "SegNet": ({"arch": "segnet", "classes": 11}, (360, 480), (32, 32)),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per network (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--half", action="store_true", help="float16 (on CUDA)")
    parser.add_argument("--batch", type=int, default=1, help="images per forward pass")
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--sparsities", nargs="+", type=float, default=list(SPARSITIES))
    parser.add_argument("--round-to", type=int, default=1, help="keep multiples of this many channels per layer")
    parser.add_argument("--coupled", action="store_true", help="convs summed into one stream share a mask")
    parser.add_argument("--contiguous", action="store_true", help="compressed network in contiguous memory format")
    parser.add_argument("--vs-torch-pruning", action="store_true", help="the same channels removed by Torch-Pruning")
    parser.add_argument("--profile", action="store_true", help="time shares by operation of each compressed network")
    parser.add_argument("--quick", action="store_true", help="tiny inputs, one sparsity, one run: a smoke test")
    return parser.parse_args(argv)


def trained_looking(model: nn.Module, seed: int) -> nn.Module:
    """BatchNorm statistics and shifts as after training, so pruned channels carry non-zero constants."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                channels = module.num_features
                module.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(channels, generator=generator) * 0.5)
                module.running_mean.copy_(torch.randn(channels, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(channels, generator=generator) * 1.5 + 0.5)
    return model


def masked_network(
    arch: dict, sparsity: float, seed: int = 0, round_to: int = 1, coupled_at: tuple[int, int] | None = None
) -> nn.Module:
    """The network with random hard masks (random logits, then the top-k of each layer).

    With ``coupled_at`` (an input size to trace at) the convs summed into one residual stream share a mask.
    """
    torch.manual_seed(seed)
    model = trained_looking(build_model(arch), seed)
    if sparsity > 0:
        pruner = SoftTopKPruner(final_sparsity=sparsity, round_to=round_to, coupled_masks=coupled_at is not None)
        example = None if coupled_at is None else torch.randn(1, 3, *coupled_at)
        model = pruner.on_pruning_end(pruner.configure_model(model, example))
    return model.eval()


def operation_shares(model: nn.Module, x: torch.Tensor) -> list[tuple[str, float]]:
    """Fraction of the forward pass's self time per operation, largest first."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(x)
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        totals[event.key.removeprefix("aten::").removeprefix("mkldnn_")] += event.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    shares = sorted(((name, time / whole) for name, time in totals.items()), key=lambda item: -item[1])
    return [(name, share) for name, share in shares if share >= 0.01]


def human(number: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if number >= scale:
            return f"{number / scale:.2f}{unit}"
    return f"{number:.0f}"


def benchmark(name: str, args: argparse.Namespace) -> None:
    arch, full_size, quick_size = NETWORKS[name]
    size = quick_size if args.quick else full_size
    sparsities = (0.75,) if args.quick else args.sparsities
    dtype = torch.float16 if args.half else torch.float32
    x = torch.randn(args.batch, 3, *size, device=args.device, dtype=dtype)
    dense = masked_network(arch, 0.0).to(args.device, dtype)
    dense_stats = model_statistics(dense, x)
    masks = "coupled masks" if args.coupled else "independent masks"
    print(f"\n{name} at {size[0]}x{size[1]}, batch {args.batch}, {describe_device(args)}, {masks}")
    print(
        f"{'sparsity':>8}  {'params':>17}  {'MACs':>17}  {'MAC ratio':>9}  "
        f"{'dense ms':>9}  {'masked ms':>9}  {'compressed ms':>13}  {'speedup':>7}  {'of MACs':>7}  error (noise)"
    )
    runs, warmup = (1, 0) if args.quick else (args.runs, args.warmup)
    for sparsity in sparsities:
        coupled_at = quick_size if args.coupled else None
        masked = masked_network(arch, sparsity, round_to=args.round_to, coupled_at=coupled_at).to(args.device, dtype)
        compressed = compress(masked, x, check=not args.half, channels_last=False if args.contiguous else None)
        models = {"dense": dense, "masked": masked, "compressed": compressed}
        if args.vs_torch_pruning:
            peer, peer_errors = torch_pruning_peer.compare(masked, x)
            models["torch-pruning"] = peer
        latency = {name: seconds * 1000 for name, seconds in median_latencies(models, x, runs, warmup).items()}
        noise = "" if args.half else f" ({summation_order_noise(masked, x):.1e})"
        print(row(sparsity, dense_stats, compressed, x, latency, "compressed", exactness(compressed) + noise))
        if args.vs_torch_pruning:
            errors = f"{peer_errors[0]:.1e} [{peer_errors[1]:.2f} vs masked]"
            print(row("  T-P", dense_stats, peer, x, latency, "torch-pruning", errors))
        if args.profile:
            shares = ", ".join(f"{op} {share:.0%}" for op, share in operation_shares(compressed, x)[:8])
            print(f"{'':>8}  compressed, time by operation: {shares}")


def row(label, dense_stats: dict, small: nn.Module, x: torch.Tensor, latency: dict, name: str, errors: str) -> str:
    """One line of the table: ``small`` (the network timed as ``name``) against the dense network."""
    stats = model_statistics(small, x)
    ratio = dense_stats["macs"] / stats["macs"]
    speedup = latency["dense"] / latency[name]
    masked = f"{latency['masked']:>9.1f}" if name == "compressed" else f"{'':>9}"
    return (
        f"{label:>8}  {human(dense_stats['parameters']) + ' -> ' + human(stats['parameters']):>17}  "
        f"{human(dense_stats['macs']) + ' -> ' + human(stats['macs']):>17}  {ratio:>8.2f}x  "
        f"{latency['dense']:>9.1f}  {masked}  {latency[name]:>13.1f}  "
        f"{speedup:>6.2f}x  {speedup / ratio:>7.2f}  {errors}"
    )


def exactness(compressed: nn.Module) -> str:
    """max |compressed - masked| / max |masked| on the benchmark input (and in float64 when that differs)."""
    spec = compression_spec(compressed)
    if "relative_error" not in spec:
        return "-"
    text = f"{spec['relative_error']:.1e}"
    if "relative_error_float64" in spec:
        text += f" ({spec['relative_error_float64']:.1e} in float64)"
    return text


def summation_order_noise(masked: nn.Module, x: torch.Tensor) -> float:
    """max |masked - masked in channels_last| / max |masked|: float32 rounding alone, with no compression."""
    reordered = copy.deepcopy(masked).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        reference = masked(x)
        other = reordered(x.contiguous(memory_format=torch.channels_last))
    return relative_error(reference, other)


def describe_device(args: argparse.Namespace) -> str:
    if args.device == "cuda":
        return f"{torch.cuda.get_device_name()}, {'float16' if args.half else 'float32'}"
    return f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.half and args.device != "cuda":
        print("--half needs --device cuda", file=sys.stderr)
        return 2
    if args.vs_torch_pruning and not (args.coupled and torch_pruning_peer.available()):
        print(
            "--vs-torch-pruning needs --coupled (Torch-Pruning removes the channels of a residual stream's "
            "convs together) and the package torch-pruning (pip install torch-pruning)",
            file=sys.stderr,
        )
        return 2
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True  # the warm-up runs pick each conv's fastest kernel, as in training
    warnings.simplefilter("ignore", UserWarning)  # the float32/float64 note of compress: shown in "error"
    for name in args.networks:
        benchmark(name, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
