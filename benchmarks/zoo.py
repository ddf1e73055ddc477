"""ACoSP on networks written elsewhere: torchvision's CNNs and timm's CNN families, trained, hardened, compressed.

    python benchmarks/zoo.py torchvision                      # every torchvision CNN, independent masks at 0.5
    python benchmarks/zoo.py torchvision --coupled --sparsity 0.75
    python benchmarks/zoo.py timm --only resnet50d convnext_atto
    python benchmarks/zoo.py torchvision timm --table docs/zoo.md   # both settings, the table in docs/zoo.md
    python benchmarks/zoo.py torchvision --coupled --sparsity 0.75 --speed 520 --only fcn_resnet50   # latency too
    python benchmarks/zoo.py torchvision --coupled --sparsity 0.75 --speed 520 --compile --only fcn_resnet50
    python benchmarks/zoo.py torchvision --coupled --sparsity 0.75 --speed 520 --round-to 16 --only fcn_resnet50

Needs torchvision (and timm for the timm list): ``pip install torch==2.14.1 torchvision==0.29.1 timm``
in an environment of its own. Each network, with random weights: masks at ``--sparsity`` (coupled
with ``--coupled``) on every conv but those that compute the output channels
(``acosp.unprunable_outputs``), one SGD step with the soft masks, ``soft_to_hard_k``, one step with
the hard masks, then ``acosp.compress`` in eval mode on two random images of ``--size``. A network is
*exact* when the compressed copy matches the masked network within 1e-4 (max |difference| / max
|output|). Prints per network the outcome, the MAC and parameter reductions, or the error's first
line (the op and layer compression stopped at).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import traceback
from pathlib import Path

import torch
from torch import nn

import acosp.compress
import acosp.inject
from acosp import SoftTopKPruner
from semseg.reporting.experiment import machine, write_table
from semseg.reporting.latency import median_latencies

# Transformers without convs to prune, and networks too large for a CPU run of a few seconds.
SKIPPED_TORCHVISION = ("vit_", "swin", "maxvit", "regnet_y_128gf", "regnet_y_32gf", "regnet_y_16gf", "vgg")
# One or two small members of each CNN family timm has.
TIMM = [
    "resnet18",
    "resnet50d",
    "resnext26ts",
    "seresnet50",
    "resnest14d",
    "ecaresnet26t",
    "efficientnet_b0",
    "efficientnetv2_rw_t",
    "mobilenetv2_100",
    "mobilenetv3_small_100",
    "mobilenetv4_conv_small",
    "mixnet_s",
    "convnext_atto",
    "convnextv2_atto",
    "regnetx_002",
    "regnety_002",
    "cspresnet50",
    "cspdarknet53",
    "ese_vovnet19b_dw",
    "hrnet_w18_small",
    "dla34",
    "dpn48b",
    "repvgg_a0",
    "mobileone_s0",
    "ghostnet_100",
    "inception_v3",
    "xception41",
    "nf_resnet26",
    "eca_nfnet_l0",
    "dm_nfnet_f0",
    "tf_efficientnet_lite0",
    "tf_efficientnet_b0",
    "rexnet_100",
    "lcnet_050",
    "fbnetc_100",
    "ghostnetv2_100",
    "repghostnet_050",
    "skresnet18",
    "res2net50_26w_4s",
    "gcresnet33ts",
    "resnetblur18",
    "tresnet_m",
    "gernet_s",
    "regnetz_b16",
    "selecsls42b",
    "vovnet39a",
    "hgnetv2_b0",
    "darknet53",
    "inception_resnet_v2",
    "resnetv2_50x1_bit",
    "resnetrs50",
    "seresnext26d_32x4d",
    "legacy_seresnet18",
    "densenet121",
    "mobilenetv1_100",
    "tinynet_a",
    "hardcorenas_a",
    "semnasnet_075",
    "spnasnet_100",
    "ghostnetv3_050",
    "repvit_m0_9",
    "fastvit_t8",
    "starnet_s1",
    "inception_next_tiny",
    "rdnet_tiny",
    "cs3darknet_s",
    "hgnet_tiny",
    "efficientvit_b0",
]


def torchvision_models() -> list[tuple[str, callable]]:
    import torchvision

    models = []
    for name in torchvision.models.list_models(module=torchvision.models):
        if not name.startswith(SKIPPED_TORCHVISION):
            models.append((name, lambda name=name: torchvision.models.get_model(name, weights=None)))
    for name in torchvision.models.list_models(module=torchvision.models.segmentation):
        models.append((name, lambda name=name: torchvision.models.get_model(name, weights=None, weights_backbone=None)))
    return models


def timm_models(names=TIMM) -> list[tuple[str, callable]]:
    import timm

    return [(name, lambda name=name: timm.create_model(name, pretrained=False)) for name in names]


def _tensors(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    return [t for t in vars(output).values() if isinstance(t, torch.Tensor)] if hasattr(output, "__dict__") else []


def _step(model: nn.Module, x: torch.Tensor) -> None:
    """One SGD step on a loss every output takes part in."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    loss = sum(t.float().pow(2).mean() for t in _tensors(model(x)) if t.is_floating_point())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


# Networks whose pooling needs a larger input than the default size.
MINIMUM_SIZE = {"inception_v3": 299}  # its auxiliary classifier pools a 5x5 window late


def try_network(
    make,
    sparsity: float,
    coupled: bool,
    size: int,
    speed_size: int | None = None,
    compiled: bool = False,
    round_to: int = 1,
) -> dict:
    """What happened to one network: ``exact`` (bool or None when it failed), reductions, error text.

    ``round_to`` > 1 hardens each mask to a multiple of that many channels (``soft_to_hard_k``).

    With ``speed_size`` also ``speedup``: the dense network's latency (the faster of its contiguous
    and channels-last forms) over the compressed one's, batch 1 at that size, on this machine's threads;
    with ``compiled`` as well the same for both networks compiled (``compiled_speed``).
    """
    torch.manual_seed(0)
    started = time.perf_counter()
    row: dict = {"exact": None, "macs": None, "parameters": None, "error": "", "full_width": ""}
    try:
        model = make()
        x = torch.randn(2, 3, size, size)
        model.eval()
        dense = copy.deepcopy(model) if speed_size else None
        acosp.unprunable_outputs(model, x)  # the classes stay: segmentation classifiers keep their width
        pruner = SoftTopKPruner(final_sparsity=sparsity, min_remaining_elements=1, coupled_masks=coupled)
        model = pruner.configure_model(model, x)
        _step(model, x)
        model = acosp.inject.soft_to_hard_k(model, round_to=round_to)
        _step(model, x)
        model.eval()
        with torch.no_grad():
            small = acosp.compress.compress(model, x, tolerance=1e-4)
            before = acosp.compress.model_statistics(model, x, as_compressed=False)
            after = acosp.compress.model_statistics(small, x)
        row.update(
            exact=True, macs=before["macs"] / after["macs"], parameters=before["parameters"] / after["parameters"]
        )
        full_width = small._acosp_compression_spec["full_width"]
        row["full_width"] = full_width[0] if full_width else ""  # the first tensor kept whole, and why
        if speed_size:
            row.update(speed(dense, small, speed_size, compiled))
    except Exception as error:  # noqa: BLE001 - every failure is a row of the table
        lines = [line for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        row["error"] = f"{type(error).__name__}: {lines[0][:300]}"
        row["exact"] = False if "differs from the masked one" in str(error) else None
        if "--traceback" in sys.argv:
            traceback.print_exc()
    row["seconds"] = time.perf_counter() - started
    return row


def speed(dense: nn.Module, compressed: nn.Module, size: int, compiled: bool = False) -> dict:
    """Median latencies (batch 1, ``size`` x ``size``) of the dense network in both memory formats and of
    the compressed one; ``speedup`` is the faster dense form's over the compressed network's. Also where
    the time goes (``conv_time``): what compression shrinks (the convs) and what it cannot (the rest);
    with ``compiled`` the latencies of both compiled (``compiled_speed``)."""
    x = torch.randn(1, 3, size, size)
    dense_last = copy.deepcopy(dense).to(memory_format=torch.channels_last)
    times = median_latencies({"dense": dense, "dense_last": dense_last, "compressed": compressed}, x, runs=5)
    baseline = min(times["dense"], times["dense_last"])
    faster_dense = dense if times["dense"] <= times["dense_last"] else dense_last
    with torch.no_grad():
        macs = {
            "dense": acosp.compress.model_statistics(dense, x, as_compressed=False)["macs"],
            "compressed": acosp.compress.model_statistics(compressed, x)["macs"],
        }
    result = {
        "dense_seconds": baseline,
        "compressed_seconds": times["compressed"],
        "speedup": baseline / times["compressed"],
        "conv_time": {
            "dense": conv_time(faster_dense, x, macs["dense"]),
            "compressed": conv_time(compressed, x, macs["compressed"]),
        },
        "bytes": {"dense": bytes_moved(faster_dense, x), "compressed": bytes_moved(compressed, x)},
    }
    if compiled:
        result["compiled_speed"] = compiled_speed(faster_dense, compressed, x)
    return result


def compiled_speed(dense: nn.Module, compressed: nn.Module, x: torch.Tensor) -> dict:
    """Median latencies of both networks compiled by ``torch.compile`` (inductor, with its weights frozen
    as constants, which folds BatchNorm and fuses element-wise work into fewer kernels). The compiled
    networks must give the eager ones' outputs (within 1e-4 of the largest), or this raises."""
    import torch._inductor.config as inductor

    with inductor.patch(freezing=True), torch.inference_mode():
        networks = {"dense": torch.compile(dense), "compressed": torch.compile(compressed)}
        started = time.perf_counter()
        for name, eager in (("dense", dense), ("compressed", compressed)):
            if not acosp.compress.relative_error(eager(x), networks[name](x)) <= 1e-4:
                raise RuntimeError(f"the compiled {name} network's output differs from the eager one's")
        compile_seconds = time.perf_counter() - started
        times = median_latencies(networks, x, runs=5)
    return {
        "dense_seconds": times["dense"],
        "compressed_seconds": times["compressed"],
        "speedup": times["dense"] / times["compressed"],
        "compile_seconds": compile_seconds,
    }


CONV_OPS = ("aten::conv2d", "aten::conv_transpose2d")


def conv_time(model: nn.Module, x: torch.Tensor, macs: float, runs: int = 3) -> dict:
    """Seconds of one forward in convs and outside them, and the convs' arithmetic rate (GMAC/s), from
    ``torch.profiler`` (the median of ``runs`` profiled forwards; the profiler adds a little to both)."""
    from torch.profiler import profile

    measured = []
    with torch.inference_mode():
        model(x)
        for _ in range(runs):
            with profile() as profiler:
                started = time.perf_counter()
                model(x)
                total = time.perf_counter() - started
            convs = sum(e.cpu_time_total for e in profiler.key_averages() if e.key in CONV_OPS) / 1e6
            measured.append((total, convs))
    total, convs = sorted(measured)[len(measured) // 2]
    return {"convs": convs, "rest": max(total - convs, 0.0), "gmacs_per_second": macs / 1e9 / convs if convs else 0.0}


def bytes_moved(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes that the operations of one forward read and write: every tensor an operation takes or
    gives, weights included, counted once per operation (a view moves nothing and is not counted).

    Where a network's time follows this figure rather than its MACs, it is bound by memory traffic:
    narrowing a layer to a quarter of its channels divides its MACs by up to 16 but its bytes by 4.
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not func.is_view:
                tensors = {id(t): t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)}
                Count.total += sum(t.numel() * t.element_size() for t in tensors.values())
            return out

    with torch.inference_mode():
        model(x)  # caches filled on a first call (a compressed conv's border terms) are not counted
        with Count():
            model(x)
    return Count.total


def _cells(row: dict) -> list[str]:
    if row["exact"]:
        return ["exact", f"{row['macs']:.2f}x", f"{row['parameters']:.2f}x"]
    return ["no", "", ""]


def _reason(results: list[dict]) -> str:
    """The first operation and layer an error names, or else the first tensor kept at full width, in a few words."""
    failed = next((row for row in results if not row["exact"]), None)
    if failed is None:
        return next((row["full_width"] for row in results if row["full_width"]), "")[:140].replace("|", "/")
    text = failed["error"].split(": ", 1)[-1].removeprefix("cannot compress this network: ")
    return text.split(";")[0][:140].replace("|", "/")


def markdown(rows: dict, settings: list, command: str, seconds: float) -> str:
    head = ["zoo", "network"]
    for sparsity, coupled in settings:
        label = f"{sparsity:g} {'coupled' if coupled else 'independent'}"
        head += [f"{label}: exact", "MACs", "parameters"]
    head.append("where compression stops, or the first tensor it keeps whole")
    lines = ["| " + " | ".join(head) + " |", "| --- | --- | " + " | ".join("---:" for _ in head[2:-1]) + " | --- |"]
    for (zoo, name), results in rows.items():
        cells = [zoo, name]
        for result in results:
            cells += _cells(result)
        cells.append(_reason(results))
        lines.append("| " + " | ".join(cells) + " |")
    counts = []
    for i, (sparsity, coupled) in enumerate(settings):
        exact = sum(bool(results[i]["exact"]) for results in rows.values())
        counts.append(f"{exact} of {len(rows)} exact at {sparsity:g} {'coupled' if coupled else 'independent'}")
    counts = ", ".join(counts)
    return "\n".join(
        lines
        + [
            "",
            f"*Written by `{command}` in {seconds / 60:.0f} minutes on {machine()} (torch {torch.__version__}): "
            f"{counts}. Random weights, masks on every conv but those that compute the output channels "
            "(`acosp.unprunable_outputs`), one SGD step with soft and one with hard masks, then `acosp.compress` "
            "in eval mode on two random 96x96 images (299x299 for Inception v3); exact: within 1e-4 of the masked "
            "network (max |difference| / max |output|); MACs and parameters: masked network / compressed one.*",
        ]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("zoos", nargs="+", choices=("torchvision", "timm"))
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--coupled", action="store_true", help="coupled masks (residual streams narrow too)")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--only", nargs="+", help="only these networks")
    parser.add_argument("--traceback", action="store_true", help="print each failure's traceback")
    parser.add_argument("--table", type=Path, help="run 0.5 independent and 0.75 coupled; write the table there")
    parser.add_argument(
        "--speed",
        type=int,
        metavar="SIZE",
        help="also time dense and compressed networks, batch 1 at SIZE x SIZE, and their time in convs and outside",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="with --speed: also time both networks compiled by torch.compile (needs a C++ compiler)",
    )
    parser.add_argument(
        "--round-to", type=int, default=1, metavar="N", help="harden each mask to a multiple of N channels"
    )
    args = parser.parse_args(argv)
    if args.compile and not args.speed:
        parser.error("--compile times the networks: give --speed SIZE as well")
    settings = [(0.5, False), (0.75, True)] if args.table else [(args.sparsity, args.coupled)]
    if args.table and "<!-- zoo-table:start -->" not in (args.table.read_text() if args.table.is_file() else ""):
        parser.error(f"{args.table} has no <!-- zoo-table:start --> marker for the table")
    networks = []
    for zoo in args.zoos:
        for name, make in torchvision_models() if zoo == "torchvision" else timm_models():
            if args.only is None or name in args.only:
                networks.append((zoo, name, make))
    started = time.perf_counter()
    rows: dict = {}
    for sparsity, coupled in settings:
        masks = f"{'coupled' if coupled else 'independent'} masks at sparsity {sparsity:g}"
        masks += f", {args.round_to}-channel multiples" if args.round_to > 1 else ""
        print(f"{len(networks)} networks, {masks}, {args.size}x{args.size}, torch {torch.__version__}", flush=True)
        exact = 0
        for zoo, name, make in networks:
            size = max(args.size, MINIMUM_SIZE.get(name, 0))
            row = try_network(make, sparsity, coupled, size, args.speed, args.compile, args.round_to)
            rows.setdefault((zoo, name), []).append(row)
            exact += bool(row["exact"])
            if row["exact"]:
                result = f"exact  MACs {row['macs']:5.2f}x  parameters {row['parameters']:5.2f}x"
                if "speedup" in row:
                    share = row["speedup"] / row["macs"]
                    result += (
                        f"  {row['dense_seconds'] * 1000:7.1f} ms -> {row['compressed_seconds'] * 1000:6.1f} ms: "
                        f"{row['speedup']:5.2f}x faster, {share:.2f} of the MAC reduction"
                    )
                    for form, split in row["conv_time"].items():
                        moved, seconds = row["bytes"][form], row[f"{form}_seconds"]
                        result += (
                            f"\n{'':<60} {form:<10} convs {split['convs'] * 1000:7.1f} ms "
                            f"({split['gmacs_per_second']:4.0f} GMAC/s), the rest {split['rest'] * 1000:6.1f} ms, "
                            f"{moved / 1e6:6.0f} MB moved ({moved / seconds / 1e9:4.1f} GB/s)"
                        )
                    fewer = row["bytes"]["dense"] / row["bytes"]["compressed"]
                    result += f"\n{'':<60} bytes moved {fewer:5.2f}x fewer"
                    if "compiled_speed" in row:
                        timed = row["compiled_speed"]
                        result += (
                            f"\n{'':<60} compiled   {timed['dense_seconds'] * 1000:7.1f} ms -> "
                            f"{timed['compressed_seconds'] * 1000:6.1f} ms: {timed['speedup']:5.2f}x faster, "
                            f"{timed['speedup'] / row['macs']:.2f} of the MAC reduction "
                            f"(compiled in {timed['compile_seconds']:.0f} s)"
                        )
            else:
                result = f"FAILED {row['error']}"
            print(f"{zoo:<12} {name:<32} {row['seconds']:6.1f} s  {result}", flush=True)
        print(f"{exact} of {len(networks)} compress exactly ({masks})", flush=True)
    if args.table:
        given = argv if argv is not None else sys.argv[1:]
        command = " ".join(["python benchmarks/zoo.py", *given])
        write_table("zoo", args.table, markdown(rows, settings, command, time.perf_counter() - started))
        print(f"wrote {args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
