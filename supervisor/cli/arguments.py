"""Argument types the commands share: a bad value is argparse's one line, exit code 2."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def seconds(what: str, most: float = 86400) -> Callable[[str], float]:
    """A positive number of seconds, at most ``most``; ``what`` names it in the message."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
        if not 0 < value <= most:
            raise argparse.ArgumentTypeError(f"{what} {text} s is outside 0 .. {most:g}")
        return value

    return parse
