"""The public surface is exactly what the docs list, and every public name is documented."""

from __future__ import annotations

import re
from pathlib import Path

import inferkit

DOCS = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def documented_names() -> set[str]:
    """Names with a `::: inferkit.X` entry (module overviews with `members: false` aside)."""
    text = DOCS.read_text(encoding="utf-8")
    entries = re.findall(r"^::: inferkit\.(\w+)\n((?:[ ]{4}.*\n)*)", text, flags=re.M)
    names = {name for name, options in entries if "members: false" not in options}
    return names | set(re.findall(r"^- `inferkit\.(\w+)`", text, flags=re.M))


def test_all_matches_the_documented_api() -> None:
    """`inferkit.__all__` lists exactly the names docs/api.md documents."""
    assert set(inferkit.__all__) == documented_names()


def test_every_public_name_exists_and_has_a_docstring_with_an_example() -> None:
    """Each exported class and function is importable and carries a docstring with an example."""
    for name in inferkit.__all__:
        obj = getattr(inferkit, name)
        if name.startswith("__"):
            continue
        doc = getattr(obj, "__doc__", None) or ""
        assert doc.strip(), f"inferkit.{name} has no docstring"
        assert ">>>" in doc, f"inferkit.{name}'s docstring has no example"


def test_every_error_is_an_inferkit_error_and_a_builtin() -> None:
    """Each exported exception derives from InferkitError and from a builtin exception."""
    errors = [
        getattr(inferkit, n)
        for n in inferkit.__all__
        if n.endswith(("Error", "Cancelled")) and n != "InferkitError"
    ]
    assert errors
    for cls in errors:
        assert issubclass(cls, inferkit.InferkitError)
        builtin_bases = [b for b in cls.__mro__[1:] if b.__module__ == "builtins"]
        assert any(b is not Exception and b is not BaseException for b in builtin_bases), cls
