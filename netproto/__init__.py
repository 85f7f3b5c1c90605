"""The p2pshare wire protocol: length-prefixed strict msgpack over TLS 1.3 (see PROTOCOL.md).

The core (``framing``, ``codec``, ``messages``, ``operations``, ``names``, ``protocol``,
``errors``, ``signing``) is sans-I/O; ``server``, ``client`` and ``streams`` drive it on asyncio.
"""
