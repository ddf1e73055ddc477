"""Compress a pruned checkpoint into a smaller network: python tool/compress.py --config FILE [key value ...].

    python tool/compress.py --config config/camvid/camvid_segnet_0.75.yaml
    python tool/compress.py --config config/camvid/camvid_segnet_0.75.yaml model_path exp/x/final.pth onnx x.onnx

Reads the checkpoint ``model_path`` (default: final.pth in save_path; its masks must be hard, i.e.
saved after ending_epoch), removes the pruned channels (acosp.compress) at the test crop size
(test_h x test_w; 32x32 for resnet18), and writes the compressed checkpoint, which tool/test.py
and tool/demo.py load like any other. Prints parameters, MACs and the measured CPU latency before
and after, and which layers write into wider tensors (also written, with every layer's statistics,
beside the checkpoint as <name>_compressed.txt). Besides config overrides, two keys belong
to this tool: ``compressed_path`` (default: the checkpoint's name with ``_compressed``) and
``onnx`` (also export the compressed network to this ONNX file and check it with onnxruntime;
needs ``pip install '.[onnx]'``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

import torch

import acosp.compress
from acosp.inject import soft_masks
from semseg.atomic import atomic_path
from semseg.config import ConfigError, load_config, repo_path
from semseg.models import describe_arch
from semseg.reporting.latency import median_latencies
from semseg.reporting.run_summary import example_input
from semseg.training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint

TOOL_KEYS = ("compressed_path", "onnx")


class CompressError(RuntimeError):
    """Something about the inputs that stops compression; the message says what."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiment YAML, e.g. config/camvid/camvid_segnet_0.75.yaml")
    parser.add_argument("--runs", type=int, default=5, help="timed forward passes per network (median); 0: no timing")
    parser.add_argument("--layers", action="store_true", help="also print parameters and MACs of every layer")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="'key value' pairs: overrides, compressed_path, onnx")
    return parser.parse_args(argv)


def split_tool_keys(opts: list[str]) -> tuple[dict[str, str], list[str]]:
    """This tool's own ``key value`` pairs, and the config overrides that remain."""
    if len(opts) % 2:
        raise ConfigError(f"overrides come in 'key value' pairs, got an odd number: {' '.join(opts)}")
    own, rest = {}, []
    for key, value in zip(opts[::2], opts[1::2]):
        if key in TOOL_KEYS:
            own[key] = value
        else:
            rest += [key, value]
    return own, rest


def export_onnx(model: torch.nn.Module, x: torch.Tensor, path: Path) -> float | None:
    """Write the ONNX file; returns onnxruntime's relative difference to torch, or None without onnxruntime."""
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as error:
        raise CompressError("ONNX export needs onnx and onnxscript: pip install '.[onnx]'") from error
    for exporter in ("torch.onnx", "onnx_ir", "onnxscript"):  # their notes on the graph are not the user's business
        logging.getLogger(exporter).setLevel(logging.ERROR)
    with warnings.catch_warnings(), atomic_path(path) as temporary:
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(temporary), dynamo=True, external_data=False, verbose=False)
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    result = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.inference_mode():
        expected = model(x).numpy()
    scale = max(float(abs(expected).max()), 1e-12)
    return float(abs(result - expected).max()) / scale


def main(argv=None) -> int:
    args = parse_args(argv)
    own, overrides = split_tool_keys(args.opts)
    cfg = load_config(args.config, overrides)
    model_path = cfg.path("model_path") if cfg.model_path else cfg.path("save_path") / "final.pth"
    masked = model_from_checkpoint(model_path, cfg)
    if soft_masks(masked):
        raise CompressError(
            f"{model_path} still has soft masks (pruning had not ended when it was saved); "
            "compress a checkpoint saved after ending_epoch"
        )
    x = example_input(cfg)
    compressed = acosp.compress.compress(masked, x)
    before = acosp.compress.model_statistics(masked, x, as_compressed=False)
    after = acosp.compress.model_statistics(compressed, x)
    if args.runs > 0:
        latency = median_latencies({"masked": masked, "compressed": compressed}, x, runs=args.runs)
        before["latency"], after["latency"] = latency["masked"], latency["compressed"]

    source = load_checkpoint(model_path)
    target = repo_path(own["compressed_path"]) if "compressed_path" in own else None
    target = target or model_path.with_name(f"{model_path.stem}_compressed.pth")
    save_checkpoint(
        {
            "state_dict": {key: value.detach().cpu() for key, value in compressed.state_dict().items()},
            "arch": source.get("arch") or describe_arch(cfg),
            "compression": acosp.compress.compression_spec(compressed),
            "config": cfg.to_dict(),
            "source": str(model_path),
        },
        target,
    )

    size = "x".join(str(side) for side in x.shape[-2:])
    summary = "\n".join(
        [
            f"{model_path} at {size}, batch 1, CPU ({torch.get_num_threads()} threads):",
            acosp.compress.format_comparison({"masked": before, "compressed": after}),
            acosp.compress.compression_report(compressed),
            "",
            acosp.compress.format_model_statistics(after),
        ]
    )
    table = target.with_suffix(".txt")
    with atomic_path(table) as temporary:
        temporary.write_text(summary + "\n", encoding="utf-8")
    print(summary if args.layers else summary.split("\n\n")[0])
    print(f"compressed checkpoint: {target}\nstatistics: {table}")
    if "onnx" in own:
        path = repo_path(own["onnx"])
        difference = export_onnx(compressed, x, path)
        if difference is None:
            print(f"ONNX: {path} (onnxruntime is not installed: not checked)")
        else:
            print(f"ONNX: {path} (onnxruntime's outputs differ by {difference:.2g}, relative)")
        if difference is not None and not difference < 1e-4:
            raise CompressError(f"the ONNX file's outputs differ from the network's by {difference:.3g}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ConfigError, CheckpointError, CompressError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
