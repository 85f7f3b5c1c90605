"""``bench/conns.py``: simulated peers on a real indexd, the RSS per connection and the probe.

A small run so the figure cannot rot; it asserts the shape of the result, never a timing or a
memory figure (those depend on the machine and on what else runs on it).
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

from bench import fixtures
from bench.conns import index_conns


def test_simulated_peers_each_sync_and_the_figures_come_with_their_caps(tmp_path: Path) -> None:
    lines: list[str] = []
    pki = fixtures.make_pki(tmp_path / "pki")
    figures = asyncio.run(
        asyncio.wait_for(
            index_conns(
                tmp_path, pki, lines.append, peers=24, processes=2, arrivals=500.0, hold=1.0
            ),
            120,
        )
    )
    rss, probe = figures
    assert (rss.key, probe.key) == ("index_conns", "index_conns_probe")
    assert rss.extra["connections"] == 24 and rss.extra["client_processes"] == 2
    assert all(math.isfinite(f.project_value) for f in figures)
    assert rss.project_value > 0 and probe.project_value > 0
    assert any("24 connections" in line for line in lines)
