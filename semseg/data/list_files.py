"""List files that the data tools write, and their rule: never overwrite a file they did not write.

A list written here starts with a line ``# list file written by tool/<tool>.py`` (``read_list``
skips lines that start with '#'), so a later run can tell its own lists, which it may replace,
from a dataset's own ``train.txt``, which it must leave alone.
"""

from __future__ import annotations

from pathlib import Path

from semseg.atomic import atomic_path

MARK = "# list file written by tool/"


class OverwriteError(FileExistsError):
    """A file is in the way that the data tools did not write; it is left as it is."""


def mark(tool: str) -> str:
    """The first line of a list that ``tool`` (make_lists, make_shapes) writes."""
    return f"{MARK}{tool}.py"


def is_ours(path: Path) -> bool:
    """Whether ``path`` is a list file that a data tool wrote."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.readline().startswith(MARK)
    except OSError:
        return False


def check_writable(path: Path, way_out: str) -> None:
    """Raise OverwriteError, naming ``path`` and ``way_out``, when ``path`` exists and is not a list of ours."""
    if path.exists() and not is_ours(path):
        raise OverwriteError(
            f"{path}: exists and was not written by this repository's data tools (the dataset's own list?); "
            f"not overwriting it. {way_out}"
        )


def write_lists(tool: str, lists: dict[Path, list[tuple[str, ...]]], way_out: str) -> dict[Path, int]:
    """Write each ``path: [(image, label), ...]`` as a list file; the number of lines of each.

    Every target is checked before the first is written, so a refusal leaves all of them as they were.
    """
    for path in lists:
        check_writable(Path(path), way_out)
    counts = {}
    for path, rows in lists.items():
        text = mark(tool) + "\n" + "".join(" ".join(row) + "\n" for row in rows)
        with atomic_path(path) as temporary:
            temporary.write_text(text, encoding="utf-8")
        counts[Path(path)] = len(rows)
    return counts
