"""The README's Python examples run as written and print what the README says they print."""

import contextlib
import io
import os
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run_in_sequence(tmp_path):
    text = README.read_text()
    # A python block, and the plain block right after it (if any) with what it prints.
    blocks = re.findall(r"```python\n(.*?)```(?:\n\n(?:which prints\n\n)?```\n(.*?)```)?", text, re.S)
    assert len(blocks) >= 4 and sum(bool(expected) for _, expected in blocks) >= 2
    namespace = {"__name__": "readme"}
    cwd = os.getcwd()
    torch.manual_seed(0)
    os.chdir(tmp_path)
    try:
        for block, expected in blocks:
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compile(block, str(README), "exec"), namespace)
            if expected:
                assert printed.getvalue() == expected, block
    finally:
        os.chdir(cwd)
    restored, model = namespace["restored"], namespace["model"]
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(restored.eval()(x), model.eval()(x))
    assert (tmp_path / "checkpoint.pth").exists()
