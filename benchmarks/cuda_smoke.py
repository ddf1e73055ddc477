"""Whether this machine can run acosp on its GPU at all, in seconds: the first step of gpu_check.sh.

    python benchmarks/cuda_smoke.py [--device cuda]

Imports the project, runs one conv forward and backward on the device, and one AMP training step
(float16 autocast, gradient scaler, channels_last) of a small ResNet-18 with soft masks, checking
that the mask logits receive finite gradients and change. A broken driver, a torch without CUDA or
a missing package fails here with its own message instead of minutes into the longer checks.
Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

import acosp
from acosp.inject import soft_masks
from acosp.pruner import SoftTopKPruner
from semseg.models import build_model


def conv_forward_backward(device: torch.device) -> None:
    conv = torch.nn.Conv2d(3, 8, 3, padding=1).to(device)
    x = torch.randn(2, 3, 16, 16, device=device, requires_grad=True)
    conv(x).square().sum().backward()
    if not (torch.isfinite(conv.weight.grad).all() and torch.isfinite(x.grad).all()):
        raise RuntimeError("a conv's gradients on the device are not finite")


def masked_amp_step(device: torch.device) -> None:
    amp = device.type == "cuda"
    torch.manual_seed(0)
    pruner = SoftTopKPruner(final_sparsity=0.5, min_remaining_elements=2)
    model = pruner.configure_model(build_model({"arch": "resnet18", "classes": 10, "width": 0.25})).to(device)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler(device.type, init_scale=1024.0, enabled=amp)  # 2**16 overflows step one
    x = torch.randn(4, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (4,), device=device)
    with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
        loss = F.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    logits = [mask.weight for mask in soft_masks(model)]
    before = [weight.detach().clone() for weight in logits]
    scaler.step(optimizer)
    scaler.update()
    if not all(torch.isfinite(weight).all() for weight in logits):
        raise RuntimeError("the mask logits are not finite after one AMP step")
    if all(torch.equal(old, weight) for old, weight in zip(before, logits)):
        raise RuntimeError("one AMP step left every mask logit unchanged")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)
    print(f"acosp {acosp.__version__}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("torch sees no CUDA device", file=sys.stderr)
        return 1
    device = torch.device(args.device)
    if device.type == "cuda":
        print(f"{torch.cuda.get_device_name()}, cuDNN {torch.backends.cudnn.version()}", flush=True)
    for name, check in (("conv forward and backward", conv_forward_backward), ("masked AMP step", masked_amp_step)):
        start = time.perf_counter()
        check(device)
        print(f"ok  {name} ({time.perf_counter() - start:.2f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
