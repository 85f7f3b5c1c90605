"""The coverage gate of `make test`: line coverage per package, each at least the floor.

Reads the combined data of a ``coverage run -m pytest`` (``COVERAGE_FILE`` or ``.coverage``),
the measured packages (``[coverage:run] source_pkgs``) and the floor (``[coverage:report]
fail_under``) from setup.cfg. The floor holds for each package on its own, not for the total:
a well-tested package must not carry an untested one. Prints one line per package, and the
files below the floor of a package that fails; exits 1 if any package is under the floor.

    python tests/support/coverage_gate.py
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import coverage

REPO = Path(__file__).resolve().parents[2]


def package_coverage(cov: coverage.Coverage, package: str) -> tuple[float, str]:
    """The package's line coverage in percent, and its report by file (least covered first)."""
    out = io.StringIO()
    percent = cov.report(
        include=[str(REPO / package / "*")],
        file=out,
        show_missing=True,
        skip_covered=True,
        sort="cover",
        precision=1,
    )
    return percent, out.getvalue()


def main() -> int:
    """Print each package's coverage; 1 if any is under the floor, else 0."""
    cov = coverage.Coverage(config_file=str(REPO / "setup.cfg"))
    cov.load()
    packages = cov.get_option("run:source_pkgs")
    floor = cov.get_option("report:fail_under")
    assert isinstance(packages, list) and packages, "setup.cfg names no [coverage:run] source_pkgs"
    assert isinstance(floor, float | int) and floor > 0, "setup.cfg sets no report:fail_under"
    failed: list[str] = []
    print(f"line coverage by package (each at least {floor:g} %):")
    for package in packages:
        percent, report = package_coverage(cov, package)
        verdict = "ok" if percent >= floor else "UNDER THE FLOOR"
        print(f"  {package:<10} {percent:5.1f} %  {verdict}")
        if percent < floor:
            failed.append(f"{package} ({percent:.1f} %)\n{report}")
    for failure in failed:
        print(f"\n{failure}", end="")
    if failed:
        print(f"\ncoverage gate: {len(failed)} package(s) under {floor:g} % of lines")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
