"""ACoSP on networks written elsewhere: torchvision's CNNs and timm's CNN families, trained, hardened, compressed.

    python benchmarks/zoo.py torchvision                      # every torchvision CNN, independent masks at 0.5
    python benchmarks/zoo.py torchvision --coupled --sparsity 0.75
    python benchmarks/zoo.py timm --only resnet50d convnext_atto

Needs torchvision (and timm for the timm list): ``pip install torch==2.14.1 torchvision==0.29.1 timm``
in an environment of its own. Each network, with random weights: masks at ``--sparsity`` (coupled
with ``--coupled``), one SGD step with the soft masks, ``soft_to_hard_k``, one step with the hard
masks, then ``acosp.compress`` in eval mode on two random images of ``--size``. A network is
*exact* when the compressed copy matches the masked network within 1e-4 (max |difference| / max
|output|). Prints per network the outcome, the MAC and parameter reductions, or the error's first
line (the op and layer compression stopped at).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import acosp.compress  # noqa: E402
import acosp.inject  # noqa: E402
from acosp import SoftTopKPruner  # noqa: E402

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
MINIMUM_SIZE = {"inception_v3": 160}


def try_network(make, sparsity: float, coupled: bool, size: int) -> dict:
    """What happened to one network: ``exact`` (bool or None when it failed), reductions, error text."""
    torch.manual_seed(0)
    started = time.perf_counter()
    row: dict = {"exact": None, "macs": None, "parameters": None, "error": ""}
    try:
        model = make()
        x = torch.randn(2, 3, size, size)
        model.eval()
        pruner = SoftTopKPruner(final_sparsity=sparsity, min_remaining_elements=1, coupled_masks=coupled)
        model = pruner.configure_model(model, x if coupled else None)
        _step(model, x)
        model = acosp.inject.soft_to_hard_k(model)
        _step(model, x)
        model.eval()
        with torch.no_grad():
            small = acosp.compress.compress(model, x, tolerance=1e-4)
            before = acosp.compress.model_statistics(model, x, as_compressed=False)
            after = acosp.compress.model_statistics(small, x)
        row.update(
            exact=True, macs=before["macs"] / after["macs"], parameters=before["parameters"] / after["parameters"]
        )
    except Exception as error:  # noqa: BLE001 - every failure is a row of the table
        lines = [line for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        row["error"] = f"{type(error).__name__}: {lines[0][:300]}"
        row["exact"] = False if "differs from the masked one" in str(error) else None
        if "--traceback" in sys.argv:
            traceback.print_exc()
    row["seconds"] = time.perf_counter() - started
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("zoos", nargs="+", choices=("torchvision", "timm"))
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--coupled", action="store_true", help="coupled masks (residual streams narrow too)")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--only", nargs="+", help="only these networks")
    parser.add_argument("--traceback", action="store_true", help="print each failure's traceback")
    args = parser.parse_args(argv)
    networks = []
    for zoo in args.zoos:
        for name, make in torchvision_models() if zoo == "torchvision" else timm_models():
            if args.only is None or name in args.only:
                networks.append((zoo, name, make))
    masks = f"{'coupled' if args.coupled else 'independent'} masks at sparsity {args.sparsity:g}"
    print(f"{len(networks)} networks, {masks}, {args.size}x{args.size}, torch {torch.__version__}", flush=True)
    exact = 0
    for zoo, name, make in networks:
        row = try_network(make, args.sparsity, args.coupled, max(args.size, MINIMUM_SIZE.get(name, 0)))
        exact += bool(row["exact"])
        if row["exact"]:
            result = f"exact  MACs {row['macs']:5.2f}x  parameters {row['parameters']:5.2f}x"
        else:
            result = f"FAILED {row['error']}"
        print(f"{zoo:<12} {name:<32} {row['seconds']:6.1f} s  {result}", flush=True)
    print(f"{exact} of {len(networks)} compress exactly ({masks})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
