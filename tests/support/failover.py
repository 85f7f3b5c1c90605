"""Helpers for tests of a peer with several index servers (README.md, "Several index servers").

- :func:`refusing_port`: a loopback port that refuses every connection, for as long as it is
  held (bound, never listening: nobody else can take it meanwhile).
- :class:`NameTable`: an index host name resolver from a table, for ``PeerConfig.index_resolver``,
  so a test gives a name several addresses without touching ``/etc/hosts``.
- :func:`indexd_processes`: ``python -m indexd`` several times (each its own folder; extra
  arguments go to every one), for tests that ``kill -9`` one of them.
- :func:`index_list` and :func:`peerd_with_indexes`: ``python -m peerd`` given that list.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.adversary import HOST, Process, indexd_process, peerd_process


@contextlib.contextmanager
def refusing_port(host: str = HOST, port: int = 0) -> Iterator[int]:
    """A TCP port on ``host`` where every connection is refused while the block runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, port))  # bound, so no one else gets it; not listening, so refused
        yield int(sock.getsockname()[1])


class NameTable:
    """Resolves the names of a table to their addresses, in order; any other name fails as a
    name the DNS does not know (``socket.gaierror``)."""

    def __init__(self, table: Mapping[str, Sequence[str]]) -> None:
        self.table = {name: list(addresses) for name, addresses in table.items()}
        #: Every lookup, as ``(host, port)``.
        self.lookups: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append((host, port))
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.table[host])


def index_list(ports: Sequence[int], host: str = HOST) -> str:
    """``-index_server_name`` for index servers on ``host``: ``host:p1,host:p2,...``."""
    return ",".join(f"{host}:{port}" for port in ports)


@contextlib.asynccontextmanager
async def indexd_processes(
    pki: Any, tmp: Path, count: int, *extra: str
) -> AsyncIterator[list[Process]]:
    """``count`` × ``python -m indexd --port 0`` (the session PKI's one certificate for all,
    a database each under ``tmp/index<n>`` unless ``extra`` names another); each process is
    killed at the end if still running. ``Process.proc.kill()`` is ``kill -9``."""
    async with contextlib.AsyncExitStack() as stack:
        processes = [
            await stack.enter_async_context(indexd_process(pki, tmp / f"index{n}", *extra))
            for n in range(count)
        ]
        yield processes


@contextlib.asynccontextmanager
async def peerd_with_indexes(
    pki: Any, name: str, index_servers: str, share: Path, *extra: str
) -> AsyncIterator[Process]:
    """``python -m peerd --no-shell`` (as :func:`tests.support.adversary.peerd_process`) given
    ``-index_server_name index_servers``: the flag given last is the one argparse keeps."""
    async with peerd_process(
        pki, name, 0, share, "-index_server_name", index_servers, *extra
    ) as process:
        yield process
