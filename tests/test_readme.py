"""The Python examples of README.md and docs/*.md run as written and print what the text says they print."""

import contextlib
import io
import os
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))


def run_blocks(path: Path, folder: Path) -> tuple[dict, int, int]:
    """Run a file's python blocks in sequence in one namespace, in ``folder``; (namespace, blocks, outputs checked)."""
    text = path.read_text()
    # A python block, and the plain block right after it (if any) with what it prints.
    blocks = re.findall(r"```python\n(.*?)```(?:\n\n(?:which prints\n\n)?```\n(.*?)```)?", text, re.S)
    namespace = {"__name__": path.stem}
    cwd = os.getcwd()
    torch.manual_seed(0)
    os.chdir(folder)
    try:
        for block, expected in blocks:
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compile(block, str(path), "exec"), namespace)
            if expected:
                assert printed.getvalue() == expected, f"{path.name}:\n{block}"
    finally:
        os.chdir(cwd)
    return namespace, len(blocks), sum(bool(expected) for _, expected in blocks)


def test_readme_python_blocks_run_in_sequence(tmp_path):
    namespace, blocks, checked = run_blocks(ROOT / "README.md", tmp_path)
    assert blocks >= 2 and checked >= 2
    rebuilt, small = namespace["rebuilt"], namespace["small"]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(x), small(x), atol=1e-6)
    assert (tmp_path / "small.pth").exists()


OTHER_DOCS = [path for path in DOCS if path.name != "library.md"]  # library.md: its own test below


@pytest.mark.parametrize("document", OTHER_DOCS, ids=[path.name for path in OTHER_DOCS])
def test_docs_python_blocks_run_in_sequence(tmp_path, document):
    run_blocks(document, tmp_path)


def test_library_checkpoint_example_restores_the_network(tmp_path):
    namespace, blocks, checked = run_blocks(ROOT / "docs" / "library.md", tmp_path)
    assert blocks >= 3 and checked >= 1
    restored, model = namespace["restored"], namespace["model"]
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(restored.eval()(x), model.eval()(x))
    assert (tmp_path / "checkpoint.pth").exists()


def test_every_document_is_linked_from_the_readme_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300  # the details live in docs/
    for document in DOCS:
        assert f"docs/{document.name}" in readme
    for path in [ROOT / "README.md", ROOT / "FAQ.md", *DOCS]:
        for target, anchor in re.findall(r"\]\(([^)#:]+)(?:#([^)]*))?\)", path.read_text()):
            assert (path.parent / target).exists(), f"{path.name} links to {target}, which does not exist"
            if anchor:
                assert anchor in anchors(path.parent / target), f"{path.name} links to {target}#{anchor}, not there"


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file."""
    headings = re.findall(r"^#+ (.*)$", path.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_the_readme_layout_names_every_module_and_document():
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    folders = {line.split()[0] for line in layout.splitlines() if line[:1].isalpha()}
    folders_named = ("acosp", "acosp/compression", "semseg", "docs", "tool", "config", "figures")
    files = [path for folder in folders_named for path in (ROOT / folder).iterdir()]
    files += [path for folder in (ROOT / "semseg").iterdir() if folder.is_dir() for path in folder.iterdir()]
    for path in files:
        if path.suffix in (".py", ".md") and path.name != "__init__.py":
            assert re.search(rf"\b{re.escape(path.name)}\b", layout), f"the README's layout does not name {path}"
    top = {path.name + "/" for path in ROOT.iterdir() if path.is_dir() and not path.name.startswith(".")}
    assert top - {"data/", "exp/", "build/", "venv/", "acosp.egg-info/"} <= folders | {"acosp/"}
