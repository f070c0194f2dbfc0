"""The layers of DEVELOPERS.md: core ← services ← adapters ← wiring, each importing only
the ones below it; core is sans-I/O (no sockets, files, event loop or clock reads)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "daemon" / "stird"
RANK = {"core": 0, "services": 1, "adapters": 2}
WIRING = 3
#: Modules the sans-I/O core must not import.
CORE_FORBIDDEN_MODULES = {
    "asyncio", "socket", "ssl", "aiohttp", "urllib.request", "http", "subprocess",
    "os", "pathlib", "io", "shutil", "tempfile", "select", "selectors", "redis", "panoramisk",
}  # fmt: skip
#: Calls that read a clock: time is a parameter in core.
CLOCK_CALLS = {"time", "time_ns", "monotonic", "now", "utcnow", "today", "perf_counter"}


def layer_of(path: Path) -> int:
    parts = path.relative_to(PACKAGE).parts
    return RANK.get(parts[0], WIRING) if len(parts) > 1 else WIRING


def imported_modules(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def stird_layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "stird" or len(parts) < 2:
        return None
    return RANK.get(parts[1], WIRING)


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_package_has_all_layers() -> None:
    assert {p.relative_to(PACKAGE).parts[0] for p in SOURCES} >= set(RANK)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_only_lower_layers(path: Path) -> None:
    own = layer_of(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for module in imported_modules(tree):
        target = stird_layer(module)
        assert target is None or target <= own, f"{path.name} (layer {own}) imports {module}"


CORE = [p for p in SOURCES if layer_of(p) == 0]


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_is_sans_io(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for module in imported_modules(tree):
        root = module.split(".")[0]
        assert module not in CORE_FORBIDDEN_MODULES and root not in CORE_FORBIDDEN_MODULES, (
            f"core module {path.name} imports {module}"
        )
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            # x.time(when) SETS a time (cryptography's PolicyBuilder); time.time() takes none
            setter = node.func.attr == "time" and bool(node.args)
            assert setter or node.func.attr not in CLOCK_CALLS, (
                f"{path.name} reads a clock: {node.func.attr}"
            )
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id != "open", f"{path.name} opens a file"


def test_checker_catches_a_violation(tmp_path: Path) -> None:
    """The check itself can fail: a core module importing an adapter is caught."""
    tree = ast.parse("from stird.adapters import keyfiles\nimport time\ntime.time()\n")
    assert stird_layer(imported_modules(tree)[0]) == RANK["adapters"] > RANK["core"]
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert any(isinstance(c.func, ast.Attribute) and c.func.attr in CLOCK_CALLS for c in calls)
