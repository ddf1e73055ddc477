"""The tools' command lines: ``--config FILE [--device D] key value ...``, with the options anywhere.

argparse hands everything after the first override to the overrides, so ``key value --device cpu``
would make ``--device`` a config key. ``parse_with_overrides`` takes such options back.
"""

from __future__ import annotations

import argparse


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
