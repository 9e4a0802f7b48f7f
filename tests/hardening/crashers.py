"""Stand-ins for a decoder that dies on a hostile file, importable by name (they run in the probe's
child process, see inference.audio.probe_isolated)."""
from __future__ import annotations

import ctypes
import os
import signal


def segfault(path: str, field: str, **_):
    """What a memory-corruption bug in a decoder does: SIGSEGV (a read of address 0)."""
    ctypes.string_at(0)


def abort(path: str, field: str, **_):
    """An assertion inside native code: SIGABRT."""
    os.kill(os.getpid(), signal.SIGABRT)


def hang(path: str, field: str, **_):
    """A decoder stuck in a loop in native code (libc sleep, which holds no Python lock)."""
    ctypes.CDLL(None).sleep(3600)


def allocate(path: str, field: str, **_):
    """A header that makes the decoder allocate what it declares (8 GB)."""
    return bytearray(8 * 1024 ** 3)


# A decoder that crashes only on marked files (the worker's decode in a child process,
# covers.worker.DECODE_TARGET): a file ending with MARKER crashes it; any other is decoded normally.
MARKER = b"#crash-the-decoder#"


def _marked(path: str) -> bool:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - len(MARKER)))
        return fh.read() == MARKER


def segfault_on_marker(path: str, field: str, **kwargs):
    if _marked(path):
        segfault(path, field)
    from inference.audio import decode_to_file
    return decode_to_file(path, field, **kwargs)


def abort_on_marker(path: str, field: str, **kwargs):
    if _marked(path):
        abort(path, field)
    from inference.audio import decode_to_file
    return decode_to_file(path, field, **kwargs)


def hang_on_marker(path: str, field: str, **kwargs):
    if _marked(path):
        hang(path, field)
    from inference.audio import decode_to_file
    return decode_to_file(path, field, **kwargs)
