"""The open-file limit: a daemon raises its soft limit to the hard one at start
(:func:`raise_open_file_limit`), and sizes ``--max-connections`` (when not given) to the
descriptors that leaves (:func:`connections_for`; README.md, "Connection limits").
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

#: Descriptors kept for everything but connections: shared files being served or written,
#: the database, the thread pools' pipes, the listening sockets, the log (half the limit
#: when it is under twice this).
RESERVED = 256


def raise_open_file_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit (logged); return the soft limit now.

    A hard limit of "unlimited" leaves the soft limit as it is (Linux refuses it anyway), as
    does a refusal.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
            return soft
        log.info("open-file limit raised from %d to %d", soft, hard)
        return hard
    log.info("open-file limit: %d", soft)
    return soft


#: The most connections the open-file limit alone gives (~1 GiB of idle connections at the
#: 64 KiB bound of PROTOCOL.md §6, over twice the cap): a hard limit of a million does not
#: mean a million connections. More takes ``--max-connections``.
MAX_DEFAULT_CONNECTIONS = 8192


def connections_for(open_files: int) -> int:
    """The ``--max-connections`` an open-file limit allows: half of what :data:`RESERVED`
    leaves (half the limit when it is under twice :data:`RESERVED`), since connections up to
    twice the cap are each answered BUSY before they close (PROTOCOL.md §6); at least 1, at
    most :data:`MAX_DEFAULT_CONNECTIONS`."""
    usable = open_files - min(RESERVED, open_files // 2)
    return max(1, min(MAX_DEFAULT_CONNECTIONS, usable // 2))
