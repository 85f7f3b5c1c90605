"""``p2pshare``: one-shot commands that talk to the running ``peerd`` over its control socket.

``p2pshare search KEYWORD``, ``p2pshare get KEYWORD FILE``, ``p2pshare status`` and
``p2pshare sync`` (each with ``--json``) ask the peer of this user on this machine, through the
Unix socket in its state directory (PROTOCOL.md §9), and print what the shell would.
"""
