"""What an object of the package does in a child process forked from its own (a gunicorn
worker forked after ``--preload``, or any fork of a host's): locks of its own, since one of
the parent's threads may have held the parent's at the fork, and nothing of what the parent's
threads were doing, since they are not in the child to finish it."""

from __future__ import annotations

import functools
import os
import weakref
from typing import Protocol


class Forkable(Protocol):
    def _after_fork(self) -> None:
        """Called in a forked child, on the child's copy of the object."""


def after_fork_in_child(owner: Forkable) -> None:
    """Have ``owner._after_fork()`` run in every child forked from this process, for as long as
    ``owner`` lives (the registration does not keep it alive)."""
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=functools.partial(_call, weakref.ref(owner)))


def _call(owner: weakref.ref[Forkable]) -> None:
    live = owner()
    if live is not None:
        live._after_fork()
