"""Stand-ins for a decoder that dies on a hostile file, importable by name (they run in the probe's
child process, see inference.audio.probe_isolated)."""
from __future__ import annotations

import ctypes
import os
import signal


def segfault(path: str, field: str):
    """What a memory-corruption bug in a decoder does: SIGSEGV (a read of address 0)."""
    ctypes.string_at(0)


def abort(path: str, field: str):
    """An assertion inside native code: SIGABRT."""
    os.kill(os.getpid(), signal.SIGABRT)


def hang(path: str, field: str):
    """A decoder stuck in a loop in native code (libc sleep, which holds no Python lock)."""
    ctypes.CDLL(None).sleep(3600)


def allocate(path: str, field: str):
    """A header that makes the decoder allocate what it declares (8 GB)."""
    return bytearray(8 * 1024 ** 3)
