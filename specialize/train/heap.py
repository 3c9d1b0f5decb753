"""Give the C heap's free memory back to the system between micro-batches (glibc only).

A training step's forward pass allocates the tensors it saves for the backward pass
interleaved with short-lived temporaries of other sizes. glibc's allocator cannot reuse all
of the holes they leave for the next micro-batch's differently sized tensors, so its heap,
and the process's resident memory, grows to well above what is alive at any moment: on the
bundled model in float32 the high-water mark was 1.6x the live peak (``docs/performance.md``).
``malloc_trim(0)`` before a micro-batch's forward pass returns the free pages, so each
micro-batch starts from what is really alive. Other C libraries (musl, macOS) do not have
it; there this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def trim() -> bool:
    """Return the heap's free pages to the system; True when the C library could."""
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False
