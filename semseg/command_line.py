"""The tools' command lines: ``--config FILE [--device D] key value ...``, with the options anywhere; their logs.

argparse hands everything after the first override to the overrides, so ``key value --device cpu``
would make ``--device`` a config key. ``parse_with_overrides`` takes such options back.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path


def parse_with_overrides(parser: argparse.ArgumentParser, argv=None, overrides: str = "opts") -> argparse.Namespace:
    """``parser.parse_args``, then every ``--option VALUE`` (or ``--option=VALUE``) among the overrides
    that the parser knows is set as that option and removed from them."""
    args = parser.parse_args(argv)
    options = {
        flag: action
        for action in parser._actions
        for flag in action.option_strings
        if flag.startswith("--") and action.nargs is None and action.dest != "help"
    }
    rest, tokens, i = [], list(getattr(args, overrides)), 0
    while i < len(tokens):
        flag, _, attached = tokens[i].partition("=")
        action = options.get(flag)
        if action is None or (not attached and i + 1 >= len(tokens)):
            rest.append(tokens[i])
            i += 1
            continue
        value = attached if attached else tokens[i + 1]
        if action.choices and value not in action.choices:
            choices = ", ".join(map(str, action.choices))
            parser.error(f"argument {flag}: invalid choice: {value!r} (choose from {choices})")
        setattr(args, action.dest, action.type(value) if action.type else value)
        i += 1 if attached else 2
    setattr(args, overrides, rest)
    return args


def setup_logging(folder: Path, name: str, rank: int = 0) -> Path | None:
    """Log to the terminal and, on rank 0, to ``folder/<name>-<time>.log`` too (returned); other ranks
    log warnings only, prefixed with their rank."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    log_path = None
    if rank == 0:
        log_path = folder / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        folder.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, encoding="utf-8"))
    prefix = f"[rank {rank}] " if rank else ""
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s %(levelname)s {prefix}%(message)s",
        datefmt="%H:%M:%S",
        handlers=handlers,
        force=True,
    )
    return log_path
