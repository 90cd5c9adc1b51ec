"""Processes: children that do not outlive their parent, and a quick exit.

``die_with_parent`` asks Linux to send this process a signal when its parent dies
(``prctl(PR_SET_PDEATHSIG)``): the local backend's torchrun gets SIGTERM when the train
step's process is killed (even by SIGKILL), and shuts its workers down (they run in
sessions of their own, where a signal to the step's process group does not reach); each
training process gets it when its torchrun dies.  Elsewhere (macOS) it does nothing.

``freeze_heap_at_exit`` (installed by ``import video_kd``) spares each process the
interpreter's last garbage collections over a heap of torch and OpenMMLab objects.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import functools
import gc
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


@functools.cache
def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith('linux'):
        return None
    return ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6', use_errno=True).prctl


def die_with_parent(sig: int = signal.SIGTERM, parent: int | None = None) -> bool:
    """Have ``sig`` sent to this process when its parent dies; True when set.

    ``parent``: the pid expected as parent; when it has died already (the race between
    fork and prctl), ``sig`` is sent at once.  For a child about to be started, use
    ``preexec_die_with_parent``.
    """
    prctl = _prctl()
    if prctl is None or prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), sig)
    return True


def preexec_die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], object] | None:
    """A ``subprocess.Popen(preexec_fn=...)`` that makes the child get ``sig`` when this
    process dies (the setting survives the child's exec); None where there is no prctl.
    libc is loaded here, in the parent: between fork and exec the child only calls prctl."""
    if _prctl() is None:
        return None
    return functools.partial(die_with_parent, sig, os.getpid())


def freeze_heap_at_exit() -> None:
    """At exit, collect the garbage there is, then freeze what is still alive.

    A process that imported torch and OpenMMLab ends with ~10^6 live objects; the
    interpreter's teardown runs the cycle collector over them while it clears the modules:
    1.2 s per process measured on the 2-core machines (a local run starts ~12 such
    processes: every step, torchrun and its workers), 0.4 s after this.  The ``collect``
    first runs every finalizer of garbage made before exit as usual; what ``freeze``
    spares is only the scan of objects alive until the end, whose memory the OS takes
    back anyway.  atexit runs it before the handlers registered earlier (logging's
    flush among them), which still run.
    """
    atexit.register(_collect_then_freeze)


def _collect_then_freeze() -> None:
    gc.collect()
    gc.freeze()
