"""Strict msgpack codec (PROTOCOL.md §2): one map per frame, string keys, no ext types.

Container and string sizes are bounded by the unpacker before allocation; nesting depth, key
types and the msgpack Timestamp (which msgpack decodes without calling ``ext_hook``) are
checked by one walk over the decoded value.
"""

from __future__ import annotations

from typing import Any

import msgpack

from netproto.errors import BadFrame

MAX_DEPTH = 16
MAX_CONTAINER = 200_000


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


_SCALARS = (str, bytes, int, float, bool, type(None))


def _check_tree(root: dict[str, Any]) -> None:
    """Refuse non-string keys, excess depth and any non-plain value (e.g. Timestamp)."""
    stack: list[tuple[Any, int]] = [(root, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > MAX_DEPTH:
            raise BadFrame(f"nesting deeper than {MAX_DEPTH}")
        if isinstance(node, dict):
            for key, value in node.items():
                if type(key) is not str:
                    raise BadFrame("map keys must be strings")
                if type(value) in (dict, list):
                    push((value, depth + 1))
                elif not isinstance(value, _SCALARS):
                    raise BadFrame(f"value of type {type(value).__name__} is not allowed")
        else:
            for value in node:
                if type(value) in (dict, list):
                    push((value, depth + 1))
                elif not isinstance(value, _SCALARS):
                    raise BadFrame(f"value of type {type(value).__name__} is not allowed")
