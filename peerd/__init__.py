"""The p2pshare peer: the share it serves, its server, the client library, and the daemon.

``peerd.share`` reads the shared folder safely, ``peerd.server`` serves ``list`` and ``fetch``,
``peerd.client`` talks to the index and to other peers, ``peerd.download`` fetches a file and
verifies it before it lands in the share, and ``peerd.daemon`` ties them together.
"""
