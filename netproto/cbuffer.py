"""The address of any Python buffer, for the few C calls made through ctypes.

``ctypes`` takes ``bytes`` and writable buffers, but not a read-only ``memoryview`` slice (a
block cut from a received chunk, a stretch of a file read as ``bytes``) without copying it.
:func:`c_buffer` asks CPython for the buffer itself (``PyObject_GetBuffer``, a stable ABI
since 3.11) and gives its address and length while it is held.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from typing import TypeAlias

#: Bytes as they are handed around: one buffer, or a view of part of one.
Buffer: TypeAlias = bytes | bytearray | memoryview


class _PyBuffer(ctypes.Structure):
    """CPython's ``Py_buffer``."""

    _fields_ = (
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.py_object),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    )


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = (ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int)
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = (ctypes.POINTER(_PyBuffer),)
_release_buffer.restype = None
_PyBUF_SIMPLE = 0  # contiguous bytes, read-only is fine


@contextlib.contextmanager
def c_buffer(obj: Buffer) -> Iterator[tuple[int, int]]:
    """``(address, length)`` of ``obj``'s contiguous bytes, valid inside the ``with``."""
    view = _PyBuffer()
    if _get_buffer(obj, ctypes.byref(view), _PyBUF_SIMPLE) != 0:
        raise TypeError("expected a contiguous buffer")  # pragma: no cover - raised above
    try:
        yield view.buf or 0, view.len
    finally:
        _release_buffer(ctypes.byref(view))


__all__ = ["Buffer", "c_buffer"]
