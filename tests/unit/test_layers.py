"""The house's layers, read from the source with `ast`: api/ and workers/ import shared/ (and
libraries) only, never each other; shared/ imports neither; the public client package mmsearch/
imports nothing of the service."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVICE = {"api", "workers", "shared", "mmsearch"}
FORBIDDEN = {
    "api": {"workers", "mmsearch"},
    "workers": {"api", "mmsearch"},
    "shared": {"api", "workers", "mmsearch"},
    "mmsearch": {"api", "workers", "shared"},
}


def imported_packages(path: Path) -> set[str]:
    """The top-level names of everything `path` imports, wherever in the module the import is."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_down_only(package: str) -> None:
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"no modules under {package}/"
    wrong = {str(f.relative_to(REPO)): sorted(imported_packages(f) & FORBIDDEN[package]) for f in files}
    assert {f: names for f, names in wrong.items() if names} == {}


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from workers.stack import main\n    import api.broker\n")
    assert imported_packages(module) == {"workers", "api"}
