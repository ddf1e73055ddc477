"""Installs the ``acosp`` library and ``semseg``, the research pipeline that ``tool/`` and ``benchmarks/`` run.

Install with ``pip install -e .`` to work on the repository: the scripts then import its code as you edit it.
"""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = next(
    line.split('"')[1]
    for line in (here / "acosp" / "__init__.py").read_text().splitlines()
    if line.startswith("__version__")
)

setup(
    name="acosp",
    version=version,
    description="Auto-Compressing Subset Pruning: channel pruning of CNNs during training",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["acosp", "acosp.*", "semseg", "semseg.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.0",
        "numpy",
        "opencv-python-headless",
        "pillow",
        "pyyaml",
        "tensorboardX",
        "tqdm",
    ],
    # setuptools: the packaging test builds a wheel without build isolation. onnx: ONNX export of
    # compressed networks (torch's exporter needs onnxscript), checked with onnxruntime. peer:
    # Torch-Pruning, which benchmarks/compress_speed.py --vs-torch-pruning compares with, and whose MAC
    # counter a test holds the compressed networks' counts against.
    extras_require={
        "test": ["pytest>=7", "ruff>=0.5", "setuptools>=70.1", "onnx", "onnxscript", "onnxruntime", "torch-pruning"],
        "onnx": ["onnx", "onnxscript", "onnxruntime"],
        "peer": ["torch-pruning"],
    },
)
