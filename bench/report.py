"""The benchmark's table: each figure, its same-run limit, the ratio and the target."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from bench.harness import Figure


def _value(value: float, unit: str) -> str:
    if unit == "/s":
        return f"{value:,.0f}/s" if value >= 100 else f"{value:.2f}/s"
    if unit == "ms":
        return f"{value:.3f} ms" if value < 1 else f"{value:.2f} ms"
    if unit == "MB/s":
        return f"{value:,.0f} MB/s"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    if unit == "µs":
        return f"{value:,.1f} µs"
    return f"{value:g} {unit}"


def _ratio(figure: Figure) -> str:
    if figure.direction == "ge" and figure.target < 1:
        return f"{figure.ratio:.0%}"
    return f"{figure.ratio:.2f}×"


def table(figures: list[Figure], title: str = "") -> Table:
    """The figures as a rich table."""
    t = Table(title=title or None, show_lines=False)
    t.add_column("figure")
    t.add_column("project", justify="right")
    t.add_column("limit (same run)", justify="right")
    t.add_column("ratio", justify="right")
    t.add_column("target", justify="right")
    t.add_column("", justify="center")
    for f in figures:
        summary = "worst" if f.summary == "max" else "median"
        t.add_row(
            f"{f.name}\n[dim]{f.notes}[/dim]" if f.notes else f.name,
            f"{_value(f.project_value, f.unit)}\n[dim]{summary} of {len(f.project)}[/dim]",
            f"{_value(f.limit_value, f.unit)}\n[dim]{f.limit_name}[/dim]",
            _ratio(f),
            f.target_text,
            "[green]✓ pass[/green]" if f.passed else "[red]✗ miss[/red]",
        )
    return t


def markdown(figures: list[Figure]) -> str:
    """The figures as a Markdown table (for BENCHMARKS.md)."""
    lines = [
        "| figure | project | limit (same run) | ratio | target | |",
        "|---|---:|---:|---:|---:|:-:|",
    ]
    for f in figures:
        lines.append(
            f"| {f.name} | {_value(f.project_value, f.unit)} | {_value(f.limit_value, f.unit)}"
            f" ({f.limit_name}) | {_ratio(f)} | {f.target_text} | {'✓' if f.passed else '✗'} |"
        )
    return "\n".join(lines)


def render(console: Console, figures: list[Figure], report: dict[str, Any]) -> None:
    """Print the table and the machine line."""
    m = report["machine"]
    load = report["load_average"]
    console.print(table(figures, f"p2pshare bench ({report['mode']}, {report['seconds']:.0f} s)"))
    console.print(
        f"{m['nproc']} × {m['cpu']}; Python {m['python']}; {m['openssl']};"
        f" load {load['start'][0]:.2f} → {load['end'][0]:.2f}",
        highlight=False,
    )
    verdict = "all targets met" if report["passed"] else "some targets missed"
    console.print(f"[bold]{verdict}[/bold]")
    console.print(markdown(figures), highlight=False, markup=False, soft_wrap=True)


def figures_from_json(report: dict[str, Any]) -> list[Figure]:
    """The figures of a saved report (``bench/results/*.json``)."""
    fields = (
        "key", "name", "unit", "project", "limit", "target", "direction", "summary",
        "limit_name", "notes", "extra",
    )  # fmt: skip
    return [Figure(**{k: f[k] for k in fields}) for f in report["figures"]]


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.report [PATH]``: a saved run's table in Markdown, with its machine."""
    import json
    import sys
    from pathlib import Path

    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else Path(__file__).resolve().parent / "results" / "latest.json"
    report = json.loads(path.read_text())
    m, load = report["machine"], report["load_average"]
    print(markdown(figures_from_json(report)))
    print()
    print(
        f"{report['mode']} run of {report['started']} ({report['seconds']:.0f} s), commit"
        f" {m['commit']}: {m['nproc']} × {m['cpu']}, Linux {m['kernel']}, Python {m['python']},"
        f" {m['openssl']}, msgpack {m['msgpack']}; load average {load['start'][0]:.2f} at the"
        f" start, {load['end'][0]:.2f} at the end."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
