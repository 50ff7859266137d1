"""Scoped silencing of the libraries' loading chatter; the user's own settings are restored."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["quiet_libraries"]

# Only the outermost of nested or concurrent uses saves and restores the libraries' settings.
_lock = threading.Lock()
_depth = 0


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Hide diffusers'/transformers' per-file progress bars and import-time notices.

    transformers warns once that its image processors fall back to PIL without torchvision when
    diffusers' pipeline modules import them; inferkit never uses those processors. diffusers
    warns about float16 pipelines on a CPU; inferkit's policy records that decision itself.
    """
    global _depth
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    with _lock:
        _depth += 1
        outermost = _depth == 1
    if not outermost:
        try:
            yield
        finally:
            with _lock:
                _depth -= 1
        return
    d_on, t_on = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    t_level, d_level = tlog.get_verbosity(), dlog.get_verbosity()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()
    dlog.set_verbosity_error()
    try:
        yield
    finally:
        tlog.set_verbosity(t_level)
        dlog.set_verbosity(d_level)
        if d_on:
            dlog.enable_progress_bar()
        if t_on:
            tlog.enable_progress_bar()
        with _lock:
            _depth -= 1
