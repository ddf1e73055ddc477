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
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 3
    namespace = {"__name__": "readme"}
    printed = io.StringIO()
    cwd = os.getcwd()
    torch.manual_seed(0)
    os.chdir(tmp_path)
    try:
        with contextlib.redirect_stdout(printed):
            for block in blocks:
                exec(compile(block, str(README), "exec"), namespace)
    finally:
        os.chdir(cwd)
    expected = re.search(r"which prints\n\n```\n(.*?)```", text, re.S).group(1)
    assert printed.getvalue() == expected
    restored, model = namespace["restored"], namespace["model"]
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(restored.eval()(x), model.eval()(x))
    assert (tmp_path / "checkpoint.pth").exists()
