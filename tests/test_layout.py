"""The package plan of ``utils/`` holds: lower packages never import higher ones, no import hides inside a function,
only ``utils/cli`` sees argparse, and ``utils/`` holds only sub-packages (see docs/architecture.md)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# lowest first; a module may import its own package and any package before it
LAYERS = ["core", "sparsity", "results", "runtime", "device", "scoring", "regrow", "prune", "search", "cli"]
BASES = {"models": "core", "data": "core"}  # top-level packages the library builds on, and what they may import


def _modules() -> list[Path]:
    return sorted([*(ROOT / "utils").rglob("*.py"), *(ROOT / "models").rglob("*.py"), *(ROOT / "data").rglob("*.py")])


def _package(path: Path) -> str:
    parts = path.relative_to(ROOT).parts
    return parts[1] if parts[0] == "utils" else parts[0]


def _imports(tree: ast.AST) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
    return found


def _rank(package: str) -> int:
    return LAYERS.index(BASES.get(package, package))


def test_utils_holds_only_packages() -> None:
    loose = [p.name for p in (ROOT / "utils").glob("*.py") if p.name != "__init__.py"]
    assert loose == []
    for folder in (ROOT / "utils").iterdir():
        if folder.is_dir() and folder.name != "__pycache__":
            init = folder / "__init__.py"
            assert init.is_file() and ast.get_docstring(ast.parse(init.read_text())), f"{folder.name}: no docstring"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_lower_packages_never_import_higher(path: Path) -> None:
    own = _package(path)
    for module, line in _imports(ast.parse(path.read_text())):
        parts = module.split(".")
        if parts[0] == "utils" and len(parts) > 1:
            assert _rank(parts[1]) <= _rank(own), f"{path.name}:{line} imports {module} (above {own})"
        elif parts[0] in BASES and own not in BASES:
            continue
        elif parts[0] in BASES and parts[0] != own:
            pytest.fail(f"{path.name}:{line}: {own} imports {module}")


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_import_inside_a_function(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for func in ast.walk(tree):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for module, line in _imports(func):
                assert module.split(".")[0] not in {"utils", "models", "data"}, f"{path.name}:{line} imports {module}"


@pytest.mark.parametrize("path", [p for p in _modules() if _package(p) != "cli"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_cli_package_sees_argparse(path: Path) -> None:
    assert "argparse" not in {module.split(".")[0] for module, _ in _imports(ast.parse(path.read_text()))}


GRANULARITY_NAME = r"""["'](?:weight|channel)["']"""
SEAM_LEAKS = [  # a granularity's name compared, or used as a dict key, outside the granularity modules
    re.compile(rf"[=!]=\s*{GRANULARITY_NAME}"), re.compile(rf"{GRANULARITY_NAME}\s*[=!]="),
    re.compile(rf"[{{,]\s*{GRANULARITY_NAME}\s*:"), re.compile(rf"\bin\s*[(\[{{]\s*{GRANULARITY_NAME}")]


def _code_outside_the_seam() -> list[Path]:
    skip = {"tests", "sparsity", ".venv", ".venv-ci"}
    return sorted(p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts))


@pytest.mark.parametrize("path", _code_outside_the_seam(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_granularity_name_is_compared_or_keyed_outside_the_seam(path: Path) -> None:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if "param" in line:  # a parameter called "weight" (BN gamma, a conv's weight), not a granularity
            continue
        assert not any(p.search(line) for p in SEAM_LEAKS), f"{path.name}:{number}: {line.strip()}"
