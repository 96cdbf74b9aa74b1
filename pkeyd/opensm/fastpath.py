"""Helpers for the large-file path (render, parse and self-check of ~200,000 members)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No automatic cyclic garbage collection inside the block; the previous state after it.

    Parsing a large file allocates a few hundred thousand container objects
    (partitions, lists, tuples), none of them part of a reference cycle,
    while the caller typically holds as many long-lived ones (the desired
    state): each automatic collection on the way walks them all again, for
    nothing, about a third of the time of a parse. Reference counting still
    frees everything; a cycle made inside the block waits for the next
    collection after it. Re-enabled even when the block raises. Threads
    share the switch: one thread's block pauses collection for all, which
    only costs memory for the time of the block.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
