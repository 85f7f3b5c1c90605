"""The sans-I/O core of netproto touches no sockets, event loop or clock (style: a pure core).

Two checks: the import statements of each core module (read with ``ast``, so imports inside
functions and ``TYPE_CHECKING`` blocks count too), and a fresh interpreter that imports the
core and must not have loaded the I/O modules.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import netproto

CORE = (
    *("framing", "codec", "messages", "operations", "names", "protocol", "errors", "signing"),
    "deadlines",
)
FORBIDDEN = {"asyncio", "socket", "ssl", "time"}
PACKAGE = Path(netproto.__file__).parent


def imported_modules(source: str) -> set[str]:
    """Top-level names of every module an import statement in ``source`` brings in."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            names.add("__import__")  # a dynamic import would dodge this check: refuse it
    return names


def test_import_finder_sees_every_form_of_import() -> None:
    source = (
        "import asyncio.events as ev\n"
        "from socket import socket\n"
        "def f():\n    import ssl\n"
        "if TYPE_CHECKING:\n    from time import monotonic\n"
        "x = __import__('os')\n"
    )
    assert imported_modules(source) == {"asyncio", "socket", "ssl", "time", "__import__"}


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_no_io_or_clock_module(module: str) -> None:
    source = (PACKAGE / f"{module}.py").read_text(encoding="utf-8")
    assert imported_modules(source) & (FORBIDDEN | {"__import__"}) == set()


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_only_the_core_from_netproto(module: str) -> None:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    netproto_imports = {
        node.module.split(".")[1]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("netproto.")
    }
    assert netproto_imports <= set(CORE)


def test_importing_the_core_loads_no_io_module() -> None:
    # `time` is left out here: the interpreter itself imports it at start-up (zipimport does),
    # so its presence in sys.modules says nothing about the core. The ast check above covers it.
    program = (
        "import sys\n"
        + "".join(f"import netproto.{m}\n" for m in CORE)
        + "print(sorted({'asyncio', 'socket', 'ssl'} & set(sys.modules)))\n"
    )
    # Not measured by coverage (`make test`), which itself imports `socket` in the child.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    result = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    assert result.stdout.strip() == "[]"
