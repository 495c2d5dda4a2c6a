"""The package's layers, as the README lays them out, checked from the source.

- The pure core (config, images, podspec, policy, review) reaches no I/O library,
  directly or through another module of the package.
- The probe and cluster layers (registry, netguard, egress, visibility; pullsecrets,
  selfcerts) do not reach the server (server, service, the CLI).

Every ``import`` counts, wherever it is written (inside a function, under
``TYPE_CHECKING``): a layer that needs a type from above it is already coupled to it.
The checker is proved on a small package written for the purpose, so a forbidden
import added tomorrow fails here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

PACKAGE = "webhook"
PACKAGE_DIR = Path(__file__).resolve().parents[2] / PACKAGE

CORE = ("config", "images", "podspec", "policy", "review")
PROBE_AND_CLUSTER = (
    "registry",  # registry probes
    "netguard",
    "egress",
    "visibility",
    "pullsecrets",  # the cluster's API server
    "selfcerts",
)
SERVER = ("server", "service", "__main__")

# Network, event loop, processes: what the core must be testable without.
IO_LIBRARIES = frozenset(
    {
        "aiohttp",
        "kubernetes_asyncio",
        "uvloop",
        "yarl",
        "multidict",
        "asyncio",
        "socket",
        "ssl",
        "select",
        "selectors",
        "subprocess",
        "http",
        "urllib",
    }
)


def _module_names(package_dir: Path, package: str) -> set[str]:
    return {f"{package}.{path.stem}" for path in package_dir.glob("*.py")}


def _imports(path: Path, package: str, modules: set[str]) -> set[str]:
    """Every module ``path`` imports: package modules by full name, others by top-level name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name if alias.name in modules else alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from .x import y
                base = f"{package}.{node.module}" if node.module else package
            else:
                base = node.module or ""
            if base == package:  # from webhook import policy, review
                found.update(f"{package}.{alias.name}" for alias in node.names)
            elif base in modules:
                found.add(base)
            else:
                found.add(base.split(".")[0])
    return {name for name in found if name in modules or not name.startswith(f"{package}.")}


def reach(package_dir: Path, package: str, start: str) -> dict[str, list[str]]:
    """Every module ``start`` reaches, each with one import chain from ``start`` to it."""
    modules = _module_names(package_dir, package)
    if start not in modules:
        raise LookupError(f"{start} is not a module of {package_dir}")
    chains: dict[str, list[str]] = {start: [start]}
    pending = [start]
    while pending:
        current = pending.pop()
        path = package_dir / f"{current.removeprefix(package + '.')}.py"
        for imported in sorted(_imports(path, package, modules)):
            if imported in chains:
                continue
            chains[imported] = [*chains[current], imported]
            if imported in modules:
                pending.append(imported)
    return chains


def violations(
    package_dir: Path, package: str, sources: Iterable[str], forbidden: Iterable[str]
) -> list[str]:
    """One line per forbidden module a source reaches, with the import chain that gets there."""
    banned = set(forbidden)
    found = []
    for source in sources:
        chains = reach(package_dir, package, f"{package}.{source}")
        found += [" -> ".join(chain) for name, chain in sorted(chains.items()) if name in banned]
    return found


def test_the_core_reaches_no_io_library() -> None:
    assert violations(PACKAGE_DIR, PACKAGE, CORE, IO_LIBRARIES) == []


def test_probe_and_cluster_layers_do_not_reach_the_server() -> None:
    server = {f"{PACKAGE}.{name}" for name in SERVER}
    assert violations(PACKAGE_DIR, PACKAGE, PROBE_AND_CLUSTER, server) == []


def test_the_layers_name_modules_that_exist() -> None:
    modules = _module_names(PACKAGE_DIR, PACKAGE)
    for name in (*CORE, *PROBE_AND_CLUSTER, *SERVER):
        assert f"{PACKAGE}.{name}" in modules


# --- the checker itself, on a package written for it -----------------------------


@pytest.fixture
def package(tmp_path: Path) -> Path:
    root = tmp_path / "pkg"
    root.mkdir()
    files = {
        "__init__.py": "",
        "core.py": "from pkg import helper\nimport json\n",
        "helper.py": "from .deep import thing\n",
        "deep.py": "def thing() -> None:\n    import socket.timeout\n",
        "probe.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from pkg.server import App\n",
        "server.py": "import aiohttp\nfrom . import core\n",
        "clean.py": "import re\nfrom pkg import helper as _h\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def test_checker_finds_an_io_library_two_modules_down(package: Path) -> None:
    assert violations(package, "pkg", ["core"], IO_LIBRARIES) == [
        "pkg.core -> pkg.helper -> pkg.deep -> socket"
    ]


def test_checker_finds_an_import_of_the_server_under_type_checking(package: Path) -> None:
    assert violations(package, "pkg", ["probe"], {"pkg.server"}) == ["pkg.probe -> pkg.server"]
    assert violations(package, "pkg", ["probe"], IO_LIBRARIES) == [
        "pkg.probe -> pkg.server -> aiohttp",
        "pkg.probe -> pkg.server -> pkg.core -> pkg.helper -> pkg.deep -> socket",
    ]


def test_checker_passes_a_clean_module_and_refuses_an_unknown_one(package: Path) -> None:
    assert violations(package, "pkg", ["clean"], {"json"}) == []
    with pytest.raises(LookupError):
        violations(package, "pkg", ["missing"], IO_LIBRARIES)
