r"""AUTOMATIC1111's prompt weighting syntax: ``(word:1.3)``, ``(word)``, ``[word]``, ``BREAK``.

- ``(text:1.3)`` multiplies the attention to ``text`` by 1.3 (any number, also below 1);
- ``(text)`` multiplies it by 1.1, ``((text))`` by 1.21, and so on;
- ``[text]`` divides it by 1.1;
- ``\(``, ``\)``, ``\[``, ``\]`` and ``\\`` are the plain characters;
- ``BREAK`` (in capitals, as a word) ends the current 75-token chunk: what follows starts a new
  one;
- a bracket left open applies to the end of the prompt; a closing one with no opener is text.

Example:
    >>> parse_weights("a (red:1.5) circle on a [white] background")
    [('a ', 1.0), ('red', 1.5), (' circle on a ', 1.0), ('white', 0.9091), (' background', 1.0)]

"""

from __future__ import annotations

import math
import re

__all__ = ["BREAK", "has_weights", "parse_weights"]

BREAK = "BREAK"
"""The fragment text that stands for a chunk break (its weight is -1)."""

_STEP = 1.1
_TOKENS = re.compile(
    r"""
    \\[()\[\]\\]            # an escaped bracket or backslash
    | \\                    # a lone backslash
    | \(                    # opens a weighted group
    | \[                    # opens a weakened group
    | :\s*([+-]?[.\d]+)\s*\)  # closes a group with an explicit weight
    | \)
    | \]
    | [^\\()\[\]:]+         # plain text
    | :                     # a colon that is not a weight
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def parse_weights(text: str) -> list[tuple[str, float]]:
    r"""Split ``text`` into ``(fragment, weight)`` pairs; ``(BREAK, -1.0)`` marks chunk breaks.

    Adjacent fragments of equal weight are merged; weights are rounded to 4 decimals.

    Example:
        >>> parse_weights(r"((cat)) \(literal\) [dog:0.5] BREAK sky")
        [('cat', 1.21), (' (literal) ', 1.0), ('dog:0.5', 0.9091), ('BREAK', -1.0), ('sky', 1.0)]

    """
    texts: list[str | None] = []  # None marks a BREAK
    weights: list[float] = []  # multiplied in place as groups close
    round_open: list[int] = []
    square_open: list[int] = []

    def add(piece: str | None) -> None:
        texts.append(piece)
        weights.append(1.0)

    def scale(start: int, factor: float) -> None:
        for i in range(start, len(weights)):
            weights[i] *= factor

    for match in _TOKENS.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\") and len(token) == 2:
            add(token[1])
        elif token == "(":
            round_open.append(len(texts))
        elif token == "[":
            square_open.append(len(texts))
        elif weight is not None and round_open:
            try:
                factor = float(weight)
            except ValueError:  # "1.2.3", ".": not a number, so plain text
                factor = math.nan
            if not math.isfinite(factor):  # also 400 nines, which overflow to infinity
                add(token)
                continue
            scale(round_open.pop(), factor)
        elif token == ")" and round_open:
            scale(round_open.pop(), _STEP)
        elif token == "]" and square_open:
            scale(square_open.pop(), 1 / _STEP)
        else:
            for i, piece in enumerate(_BREAK.split(token)):
                if i:
                    add(None)
                if piece:
                    add(piece)
    for start in round_open:
        scale(start, _STEP)
    for start in square_open:
        scale(start, 1 / _STEP)
    merged: list[tuple[str, float]] = []
    previous_break = False
    for piece, value in zip(texts, weights, strict=True):
        if piece is None:
            merged.append((BREAK, -1.0))
            previous_break = True
            continue
        value = round(value, 4)
        if merged and not previous_break and merged[-1][1] == value:
            merged[-1] = (merged[-1][0] + piece, value)
        else:
            merged.append((piece, value))
        previous_break = False
    return merged or [("", 1.0)]


def has_weights(text: str) -> bool:
    """Whether ``text`` uses any weighting syntax (so that it must be encoded token by token).

    Example:
        >>> has_weights("a red circle"), has_weights("a (red:1.0) circle"), has_weights("a:b")
        (False, True, False)

    """
    return parse_weights(text) != [(text, 1.0)]
