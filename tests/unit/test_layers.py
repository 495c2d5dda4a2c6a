"""The package's layers, as docs/design.md §5 lays them out, checked from the source.

- Every module of the package has exactly one layer, here and in §5.
- Each layer imports only its own and the ones before it: the pure core, then
  infrastructure, the edges, admission, and the process.
- The pure core reaches no I/O library, directly or through another module.

Every ``import`` counts, wherever it is written (inside a function, under
``TYPE_CHECKING``): a layer that needs a type from above it is already coupled to it.
The checker is proved on a small package written for the purpose, so a forbidden
import or a module without a layer added tomorrow fails here.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

PACKAGE = "webhook"
REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO / PACKAGE
DESIGN = REPO / "docs" / "design.md"

Layers = Sequence[tuple[str, tuple[str, ...]]]

# From the inside out; "__init__" is the package itself.
LAYERS: Layers = (
    ("core", ("__init__", "config", "images", "podspec", "policy", "probes", "review")),
    ("infrastructure", ("logs", "metrics", "pki")),
    (
        "edges",
        (
            "egress",  # the probe: registries, through the egress proxy and the guard
            "netguard",
            "registry",
            "visibility",
            "cluster",  # the cluster: the API server
            "pullsecrets",
            "reflector",
            "selfcerts",
        ),
    ),
    ("admission", ("admission",)),
    ("process", ("connections", "tls", "server", "service", "__main__")),
)
CORE = LAYERS[0][1]

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


def unlayered(package_dir: Path, package: str, layers: Layers) -> list[str]:
    """Modules of the package in no layer, or in more than one."""
    placed = [f"{package}.{name}" for _, names in layers for name in names]
    modules = _module_names(package_dir, package)
    missing = sorted(modules - set(placed))
    twice = sorted({name for name in placed if placed.count(name) > 1})
    unknown = sorted(set(placed) - modules)
    return (
        [f"{name}: no layer" for name in missing]
        + [f"{name}: in more than one layer" for name in twice]
        + [f"{name}: no such module" for name in unknown]
    )


def wrong_way(package_dir: Path, package: str, layers: Layers) -> list[str]:
    """One line per import of a module in a later layer than the importer's."""
    rank = {f"{package}.{name}": i for i, (_, names) in enumerate(layers) for name in names}
    modules = _module_names(package_dir, package)
    found = []
    for module in sorted(modules):
        path = package_dir / f"{module.removeprefix(package + '.')}.py"
        for imported in sorted(_imports(path, package, modules) & modules):
            if rank[imported] > rank[module]:
                found.append(
                    f"{module} ({layers[rank[module]][0]}) -> "
                    f"{imported} ({layers[rank[imported]][0]})"
                )
    return found


def design_layers(text: str) -> list[tuple[str, ...]]:
    """The modules of each numbered item under §5's "Layering" paragraph, in order."""
    section = text.split("## 5.", 1)[1].split("\n## ", 1)[0]
    listing = section.split("Layering, from the inside out", 1)[1]
    items = re.split(r"^\d+\. ", listing, flags=re.M)[1:]
    return [tuple(re.findall(r"`(\w+)`", item)) for item in items]


def test_every_module_has_exactly_one_layer() -> None:
    assert unlayered(PACKAGE_DIR, PACKAGE, LAYERS) == []


def test_each_layer_imports_only_the_layers_before_it() -> None:
    assert wrong_way(PACKAGE_DIR, PACKAGE, LAYERS) == []


def test_the_core_reaches_no_io_library() -> None:
    assert violations(PACKAGE_DIR, PACKAGE, CORE, IO_LIBRARIES) == []


def test_design_lists_the_same_layers() -> None:
    listed = design_layers(DESIGN.read_text(encoding="utf-8"))
    ours = [tuple(sorted(set(names) - {"__init__"})) for _, names in LAYERS]
    assert [tuple(sorted(names)) for names in listed] == ours


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


def test_checker_names_a_module_without_a_layer(package: Path) -> None:
    low = ("__init__", "core", "helper", "deep", "clean")
    layers: Layers = (("low", low), ("top", ("server",)))
    assert unlayered(package, "pkg", layers) == ["pkg.probe: no layer"]
    twice: Layers = (*layers, ("again", ("probe", "core")))
    assert unlayered(package, "pkg", twice) == ["pkg.core: in more than one layer"]


def test_checker_finds_an_import_into_a_later_layer(package: Path) -> None:
    layers: Layers = (
        ("low", ("__init__", "helper", "deep", "clean")),
        ("mid", ("core", "probe")),
        ("top", ("server",)),
    )
    assert wrong_way(package, "pkg", layers) == ["pkg.probe (mid) -> pkg.server (top)"]
    flat: Layers = (("all", ("__init__", "core", "helper", "deep", "clean", "probe", "server")),)
    assert wrong_way(package, "pkg", flat) == []


def test_design_layers_are_read_from_the_numbered_list() -> None:
    text = (
        "## 5. Architecture\n\nLayering, from the inside out; each layer...:\n\n"
        "1. the core: `a`, `b`. No I/O\n   and `c` on a second line.\n"
        "2. the rest: `d`.\n\n## 6. Next\n\n1. `e`\n"
    )
    assert design_layers(text) == [("a", "b", "c"), ("d",)]
