"""Argument types shared by the command-line subcommands."""

from __future__ import annotations

import argparse

__all__ = ["size_arg"]


def size_arg(text: str) -> tuple[int, int]:
    """Parse ``WIDTHxHEIGHT`` or ``N`` (a square).

    Example:
        >>> size_arg("768x512"), size_arg("64")
        ((768, 512), (64, 64))

    """
    parts = text.lower().split("x")
    try:
        if len(parts) == 1:
            return int(parts[0]), int(parts[0])
        if len(parts) == 2:
            return int(parts[0]), int(parts[1])
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not a size; use WIDTHxHEIGHT (768x512) or N")
