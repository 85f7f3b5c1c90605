"""The p2pshare peer: the share it serves, its server, the client library, and the daemon.

``peerd.share`` reads the shared folder safely behind the ``ShareStore`` protocol,
``peerd.server`` serves ``list`` and ``fetch``, ``peerd.client`` talks to the index and to
other peers, ``peerd.download`` fetches a file (staging, transfer, verify, install: one module
each) and verifies it before it lands in the share, ``peerd.index_session`` keeps the session
with the index alive, and ``peerd.daemon`` ties them together as a ``PeerSession``, the
protocol ``peerd.shell`` is written against. Errors are in ``peerd.errors``; time comes from
``peerd.clock``.
"""
