"""Decode workers and the forward pass taking turns, for a forward that has every core (the CPU).

Why: torch runs a CPU forward on one thread per core, and each parallel region ends at a barrier. A
decode worker running meanwhile takes a core from one of those threads, and the others wait for it at
every barrier: a decode of 5 ms of CPU costs the forward more than 5 ms. Measured with
``python -m bench run build`` (the build against itself with decoding during the forward): tiny model
bf16 111 against 93 images/s; ViT-S fp32 within the run-to-run spread (0.92-0.96x model-only either
way), its forward being long against a decode. On a GPU the forward leaves the cores free, and decoding
overlaps it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Turns:
    """A forward waits for the decodes in progress to end; a decode does not start while a forward runs.
    With ``enabled=False`` both run freely (a GPU forward)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._cond = threading.Condition()
        self._decoding = 0
        self._forward = False

    @contextmanager
    def decode(self) -> Iterator[None]:
        """Hold this around one decode: it starts when no forward runs."""
        if not self.enabled:
            yield
            return
        with self._cond:
            self._cond.wait_for(lambda: not self._forward)
            self._decoding += 1
        try:
            yield
        finally:
            with self._cond:
                self._decoding -= 1
                self._cond.notify_all()

    @contextmanager
    def forward(self) -> Iterator[None]:
        """Hold this around one forward pass: it starts when the decodes in progress have ended."""
        if not self.enabled:
            yield
            return
        with self._cond:
            self._forward = True
            self._cond.wait_for(lambda: self._decoding == 0)
        try:
            yield
        finally:
            with self._cond:
                self._forward = False
                self._cond.notify_all()
