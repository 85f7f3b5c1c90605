"""``bench/cluster.py``: search throughput on SQLite, PostgreSQL and two servers, and the CPU
cost of each operation, at tiny sizes.

A small run so the figures cannot rot; it asserts the shape of the results and that every
cost was measured, never a timing (those depend on the machine and on what else runs on it).
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
from pathlib import Path

from bench import fixtures
from bench.cluster import CPU_TARGETS, cluster_figures, cpu_seconds, tree_cpu_seconds


def test_cpu_seconds_counts_this_process_and_grows_with_work() -> None:
    before = cpu_seconds(os.getpid())
    end = os.times().elapsed + 0.05
    while os.times().elapsed < end:  # spin: CPU, not sleep
        pass
    assert cpu_seconds(os.getpid()) > before


def test_tree_cpu_seconds_counts_a_child_while_it_runs_and_after_it_ended() -> None:
    pid = os.getpid()
    spin = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    child = subprocess.Popen(
        [sys.executable, "-c", spin + "print('spun', flush=True)\ninput()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdin is not None
    before = tree_cpu_seconds(pid) - cpu_seconds(pid, children=True)
    assert child.stdout.readline() == "spun\n"
    running = tree_cpu_seconds(pid) - cpu_seconds(pid, children=True)
    child.stdin.close()
    child.wait()
    assert running - before >= 0.2  # the living child's own CPU
    assert cpu_seconds(pid, children=True) - cpu_seconds(pid) >= 0.2  # once it was waited for


def test_cluster_measures_three_search_setups_and_every_operation_on_both_stores(
    tmp_path: Path,
) -> None:
    lines: list[str] = []
    pki = fixtures.make_pki(tmp_path / "pki")
    figures, info = asyncio.run(
        asyncio.wait_for(
            cluster_figures(
                tmp_path,
                pki,
                lines.append,
                repeat=2,
                search_count=400,
                window=16,
                bcrypt_cost=10,
                logins=2,
                sync_files=50,
                syncs=2,
            ),
            240,
        )
    )
    keys = [f.key for f in figures]
    assert keys[:3] == ["search_sqlite", "search_pg", "search_pg2"]
    assert keys[3:] == [f"cpu_{op}" for op in CPU_TARGETS]
    for f in figures:
        assert len(f.project) == len(f.limit) == 2, f.key
        assert all(math.isfinite(v) and v >= 0 for v in f.project + f.limit), f.key
    assert all(f.project_value > 0 and f.limit_value > 0 for f in figures[:3])
    # bcrypt (cost 10: tens of ms, several ticks of the CPU clock) runs in the index's
    # process, on either store.
    assert info["login"]["sqlite_index_us"] > 0 and info["login"]["pg_index_us"] > 0
    assert info["ping_batch"]["peers"] == 1000
    assert info["ping_batch"]["postgres_write_us_per_peer"] > 0
    assert sum("rep" in line for line in lines) == 4
