"""``python -m bench --quick``: every figure of docs/design.md §6 comes with a limit and a ratio.

A smoke run so the benchmark cannot rot. It asserts the shape of the report, never a timing:
whether a target is met depends on the machine and on what else runs on it.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIGURES = {
    "search_pipelined",
    "search_one_in_flight",
    "fetch",
    "fetch_rss_large",
    "fetch_rss_small",
    "logins",
    "login_probe",
    "search_latency_scale",
    "manifest_rate",
    "swarm_disk",
}


def test_quick_bench_reports_every_figure_with_its_limit_and_ratio(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "quick"
    assert {f["key"] for f in report["figures"]} == FIGURES
    for figure in report["figures"]:
        assert figure["project"] and figure["limit"], figure["key"]
        assert figure["limit_value"] > 0, figure["key"]
        assert math.isfinite(figure["ratio"]) and figure["ratio"] >= 0, figure["key"]
        assert isinstance(figure["passed"], bool), figure["key"]
    assert "search latency" in proc.stdout  # the table was printed
