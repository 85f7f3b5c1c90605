"""Strict msgpack codec (PROTOCOL.md §2): one map per frame, string keys, no ext types.

Container and string sizes are bounded by the unpacker before allocation; nesting depth, key
types and the msgpack Timestamp (which msgpack decodes without calling ``ext_hook``) are
checked by one walk over the decoded value. A frame larger than 1 KiB is first walked
header by header (:func:`check_structure`), so nested container headers cannot make msgpack
preallocate more than the frame could ever fill.
"""

from __future__ import annotations

from typing import Any

import msgpack

from netproto.errors import BadFrame

MAX_DEPTH = 16
MAX_CONTAINER = 200_000
#: Frames up to this size skip the structural pre-check (the hot path: a search or list with
#: its token is a few hundred bytes): nested headers each claiming at most this many entries
#: preallocate under 3 MiB before msgpack's own nesting limit stops them.
STRUCTURE_CHECK_ABOVE = 1024


def _refuse_ext(code: int, data: bytes) -> Any:
    raise BadFrame(f"msgpack ext type {code} is not allowed")


def pack(obj: Any) -> bytes:
    """Encode ``obj`` as msgpack, bytes as ``bin`` and str as ``str``."""
    return msgpack.packb(obj, use_bin_type=True, datetime=False)  # type: ignore[no-any-return]


def unpack_map(data: bytes, max_len: int | None = None) -> dict[str, Any]:
    """Decode exactly one msgpack map from ``data``, or raise :class:`BadFrame`."""
    # No string or container can claim more entries than the frame has bytes: msgpack
    # preallocates an array from its header, so a looser bound lets a few header bytes
    # allocate megabytes (nested a thousand deep).
    limit = len(data) if max_len is None else min(max_len, len(data))
    if len(data) > STRUCTURE_CHECK_ABOVE:
        check_structure(data)
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_refuse_ext,
            max_str_len=limit,
            max_bin_len=limit,
            max_array_len=min(limit, MAX_CONTAINER),
            max_map_len=min(limit // 2, MAX_CONTAINER),
            max_ext_len=0,
        )
    except BadFrame:
        raise
    except msgpack.ExtraData as exc:
        raise BadFrame("trailing bytes after the msgpack map") from exc
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise BadFrame("frame is not valid msgpack") from exc
    if not isinstance(obj, dict):
        raise BadFrame("frame is not a msgpack map")
    _check_tree(obj)
    return obj


_PLAIN = frozenset((str, bytes, int, float, bool, type(None)))


def _check_tree(node: dict[str, Any] | list[Any], depth: int = 1) -> None:
    """Refuse non-string keys, excess depth and any non-plain value (e.g. Timestamp)."""
    # Recursive, checking exact types: about twice as fast as a walk with an explicit stack
    # and isinstance, and every reply a client reads pays it (BENCHMARKS.md). The recursion
    # is bounded: nothing deeper than MAX_DEPTH is entered.
    if depth > MAX_DEPTH:
        raise BadFrame(f"nesting deeper than {MAX_DEPTH}")
    values: Any
    if type(node) is dict:
        for key in node:
            if type(key) is not str:
                raise BadFrame("map keys must be strings")
        values = node.values()
    else:
        values = node
    for value in values:
        kind = type(value)
        if kind is dict or kind is list:
            _check_tree(value, depth + 1)
        elif kind not in _PLAIN:
            raise BadFrame(f"value of type {kind.__name__} is not allowed")


# What each lead byte of a msgpack value is: (kind, n). Kinds: a scalar of n bytes in all; a
# str/bin/ext whose length follows in n bytes; an array or map with n entries (fix) or whose
# count follows in n bytes; a byte that never starts a value.
_SCALAR, _SIZED, _FIXARRAY, _FIXMAP, _ARRAY, _MAP, _INVALID = range(7)


def _lead_bytes() -> list[tuple[int, int]]:
    table = [(_INVALID, 0)] * 256
    for b in range(0x00, 0x80):
        table[b] = (_SCALAR, 1)  # positive fixint
    for b in range(0xE0, 0x100):
        table[b] = (_SCALAR, 1)  # negative fixint
    for b in range(0x80, 0x90):
        table[b] = (_FIXMAP, b & 0x0F)
    for b in range(0x90, 0xA0):
        table[b] = (_FIXARRAY, b & 0x0F)
    for b in range(0xA0, 0xC0):
        table[b] = (_SCALAR, 1 + (b & 0x1F))  # fixstr
    for b, size in {0xC0: 1, 0xC2: 1, 0xC3: 1, 0xCA: 5, 0xCB: 9}.items():
        table[b] = (_SCALAR, size)  # nil, false, true, float 32/64
    for b, size in zip(range(0xCC, 0xD4), (2, 3, 5, 9, 2, 3, 5, 9), strict=True):
        table[b] = (_SCALAR, size)  # uint and int 8/16/32/64
    for b, width in {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}.items():
        table[b] = (_SIZED, width)  # bin and str 8/16/32 (ext types stay _INVALID)
    table[0xDC], table[0xDD] = (_ARRAY, 2), (_ARRAY, 4)
    table[0xDE], table[0xDF] = (_MAP, 2), (_MAP, 4)
    return table


_LEAD = _lead_bytes()


def check_structure(data: bytes) -> None:
    """Refuse (:class:`BadFrame`) a frame whose container headers claim more entries in all
    than it has bytes, that nests deeper than :data:`MAX_DEPTH`, or that holds an ext type.

    Every entry of a valid frame takes at least one byte, so a valid frame always passes;
    a frame of nested container headers (each claiming thousands of entries, which msgpack
    would preallocate) is refused after reading a few of them. Walks value headers only:
    strings and bins are skipped by their length, not read.
    """
    end = len(data)
    budget = end
    pos = 0
    # Entries still to read in each open container; the bottom one is the frame's one value.
    open_counts = [1]
    lead = _LEAD
    from_bytes = int.from_bytes
    while open_counts:
        if pos >= end:
            raise BadFrame("frame is not valid msgpack (truncated)")
        kind, n = lead[data[pos]]
        if kind == _SCALAR:
            pos += n
        elif kind == _SIZED:
            pos += 1 + n + from_bytes(data[pos + 1 : pos + 1 + n], "big")
        elif kind == _INVALID:
            raise BadFrame("msgpack ext types (and byte 0xc1) are not allowed")
        else:
            if kind in (_FIXARRAY, _FIXMAP):
                count = n
                pos += 1
            else:
                count = from_bytes(data[pos + 1 : pos + 1 + n], "big")
                pos += 1 + n
            if kind in (_FIXMAP, _MAP):
                count *= 2
            budget -= count
            if budget < 0:
                raise BadFrame("containers claim more entries than the frame holds")
            if count:
                open_counts[-1] -= 1
                open_counts.append(count)
                if len(open_counts) > MAX_DEPTH + 1:
                    raise BadFrame(f"nesting deeper than {MAX_DEPTH}")
                continue
        open_counts[-1] -= 1
        while open_counts and not open_counts[-1]:
            open_counts.pop()
