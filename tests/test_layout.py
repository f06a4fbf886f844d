"""The package plan of ``utils/`` holds: lower packages never import higher ones, no import hides inside a function,
only ``utils/cli`` sees argparse, ``utils/`` holds only sub-packages, no granularity name is compared outside the
seam, and docs/architecture.md names every module (see docs/architecture.md).

Each rule is one function ``rule(root) -> offenders`` that scans every file it applies to under ``root`` and returns
one ``path:line: reason`` per offence, and one test that asserts the list is empty, so a failure names every place
at once. ``test_each_rule_reports_every_offender`` runs the rules on a small tree with known offences."""
from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# lowest first; a module may import its own package and any package before it
LAYERS = ["core", "sparsity", "results", "runtime", "device", "scoring", "regrow", "prune", "search", "cli"]
BASES = {"models": "core", "data": "core"}  # top-level packages the library builds on, and what they may import
FIRST_PARTY = {"utils", "models", "data"}
MAPPED = ["utils", "data", "models", "benchmarks"]  # folders whose every module docs/architecture.md names
ARCHITECTURE = Path("docs") / "architecture.md"

Rule = Callable[[Path], list[str]]


def _modules(root: Path) -> list[Path]:
    return sorted([*(root / "utils").rglob("*.py"), *(root / "models").rglob("*.py"), *(root / "data").rglob("*.py")])


def _package(rel: Path) -> str:
    return rel.parts[1] if rel.parts[0] == "utils" else rel.parts[0]


def _imports(tree: ast.AST, rel: Path) -> list[tuple[str, int]]:
    """Every module an import names, absolute (relative imports resolved against ``rel``, ``from utils import x``
    read as ``utils.x``), with its line."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(rel.parent.parts[:len(rel.parent.parts) - node.level + 1]) if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            if module in FIRST_PARTY or not node.module:  # the names may be modules: `from utils import core`
                found.extend((f"{module}.{alias.name}".lstrip("."), node.lineno) for alias in node.names)
            else:
                found.append((module, node.lineno))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
    return found


def _parsed(root: Path, paths: list[Path]) -> list[tuple[Path, ast.Module]]:
    return [(p.relative_to(root), ast.parse(p.read_text(), filename=str(p))) for p in paths]


def _rank(package: str) -> int | None:
    name = BASES.get(package, package)
    return LAYERS.index(name) if name in LAYERS else None


def loose_modules_in_utils(root: Path) -> list[str]:
    """``utils/`` holds only sub-packages, each with an ``__init__.py`` that has a docstring."""
    offenders = [f"utils/{p.name}: a module directly under utils/ (put it in a package)"
                 for p in sorted((root / "utils").glob("*.py")) if p.name != "__init__.py"]
    for folder in sorted((root / "utils").iterdir()):
        if folder.is_dir() and folder.name != "__pycache__":
            init = folder / "__init__.py"
            if not (init.is_file() and ast.get_docstring(ast.parse(init.read_text()))):
                offenders.append(f"utils/{folder.name}/__init__.py: missing, or no docstring")
    return offenders


def upward_imports(root: Path) -> list[str]:
    """A ``utils`` package imports only its own and lower ones; ``models`` and ``data`` import only ``utils.core``
    and never each other (the library may import both)."""
    offenders = []
    for rel, tree in _parsed(root, _modules(root)):
        own = _package(rel)
        for module, line in _imports(tree, rel):
            parts = module.split(".")
            if parts[0] == "utils" and len(parts) > 1:
                mine, theirs = _rank(own), _rank(parts[1])
                if mine is None or theirs is None:
                    offenders.append(f"{rel}:{line}: imports {module} from {own}; not both in LAYERS")
                elif theirs > mine:
                    offenders.append(f"{rel}:{line}: imports {module} (above {own})")
            elif parts[0] in BASES and own in BASES and parts[0] != own:
                offenders.append(f"{rel}:{line}: {own} imports {module}")
    return offenders


def imports_inside_functions(root: Path) -> list[str]:
    """No first-party import inside a function (nested functions included): the import graph is the file's head."""
    offenders = set()
    for rel, tree in _parsed(root, _modules(root)):
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                offenders.update((str(rel), line, module) for module, line in _imports(func, rel)
                                 if module.split(".")[0] in FIRST_PARTY)
    return [f"{rel}:{line}: imports {module} inside a function" for rel, line, module in sorted(offenders)]


def argparse_outside_the_cli(root: Path) -> list[str]:
    """Only ``utils/cli`` sees argparse (in ``utils``, ``models`` and ``data``)."""
    return [f"{rel}:{line}: imports {module} outside utils/cli"
            for rel, tree in _parsed(root, [p for p in _modules(root) if _package(p.relative_to(root)) != "cli"])
            for module, line in _imports(tree, rel) if module.split(".")[0] == "argparse"]


GRANULARITY_NAME = r"""["'](?:weight|channel)["']"""
SEAM_LEAKS = [  # a granularity's name compared, or used as a dict key, outside the granularity modules
    re.compile(rf"[=!]=\s*{GRANULARITY_NAME}"), re.compile(rf"{GRANULARITY_NAME}\s*[=!]="),
    re.compile(rf"[{{,]\s*{GRANULARITY_NAME}\s*:"), re.compile(rf"\bin\s*[(\[{{]\s*{GRANULARITY_NAME}")]


def _code_outside_the_seam(root: Path) -> list[Path]:
    skip = {"tests", "sparsity", ".venv", ".venv-ci"}
    return sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts))


STRINGS = re.compile(r"\"[^\"]*\"|'[^']*'")  # string literals, removed before looking for parameter code


def granularity_names_outside_the_seam(root: Path) -> list[str]:
    """No granularity name (``"weight"``, ``"channel"``) is compared or used as a key outside ``utils/sparsity``
    (scripts, benchmarks and every package included; tests excepted)."""
    offenders = []
    for path in _code_outside_the_seam(root):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "param" in STRINGS.sub("", line):  # code about a parameter called "weight" (BN gamma, a conv's weight)
                continue
            if any(p.search(line) for p in SEAM_LEAKS):
                offenders.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    return offenders


def _mapped_modules(root: Path) -> list[Path]:
    found = [*root.glob("*.py"), *(p for folder in MAPPED for p in (root / folder).rglob("*.py"))]
    return sorted(p.relative_to(root) for p in found if p.is_file())


def _named(rel: Path, rows: str) -> bool:
    """``rel`` (a package's ``__init__.py``: its folder, ``utils/core/``) is named as a whole path in ``rows``."""
    names = [rel.as_posix()] + ([f"{rel.parent.as_posix()}/"] if rel.name == "__init__.py" and rel.parent.parts
                                else [])
    return any(re.search(rf"(?<![\w./-]){re.escape(name)}(?![\w/-])", rows) for name in names)


def modules_missing_from_the_map(root: Path) -> list[str]:
    """Every module at the top level and under ``utils/``, ``data/``, ``models/`` and ``benchmarks/`` has a
    table row of docs/architecture.md that names its path (a package's ``__init__.py``: its folder)."""
    text = (root / ARCHITECTURE).read_text()
    rows = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("|"))
    return [f"{rel}: named in no table row of {ARCHITECTURE.as_posix()}"
            for rel in _mapped_modules(root) if not _named(rel, rows)]


RULES: list[Rule] = [loose_modules_in_utils, upward_imports, imports_inside_functions, argparse_outside_the_cli,
                     granularity_names_outside_the_seam, modules_missing_from_the_map]


def test_utils_holds_only_packages() -> None:
    offenders = loose_modules_in_utils(ROOT)
    assert not offenders, "\n".join(offenders)


def test_lower_packages_never_import_higher() -> None:
    offenders = upward_imports(ROOT)
    assert not offenders, "\n".join(offenders)


def test_no_import_inside_a_function() -> None:
    offenders = imports_inside_functions(ROOT)
    assert not offenders, "\n".join(offenders)


def test_only_the_cli_package_sees_argparse() -> None:
    offenders = argparse_outside_the_cli(ROOT)
    assert not offenders, "\n".join(offenders)


def test_no_granularity_name_is_compared_or_keyed_outside_the_seam() -> None:
    offenders = granularity_names_outside_the_seam(ROOT)
    assert not offenders, "\n".join(offenders)


def test_the_architecture_page_names_every_module() -> None:
    offenders = modules_missing_from_the_map(ROOT)
    assert not offenders, "\n".join(offenders)


# A small tree with known offences: (file, its text) and, per rule, exactly the offenders it must report.
TREE = {
    "utils/__init__.py": '"""Library."""\n',
    "utils/core/__init__.py": '"""Level 0."""\n',
    "utils/core/ok.py": "import torch\nfrom utils.core import ok\n",
    "utils/core/up.py": "from utils.search import episodes\nfrom utils import cli\nfrom ..runtime import stage\n",
    "utils/core/lazy.py": "def f():\n    def g():\n        import models\n    return g\n",
    "utils/core/flags.py": "import argparse\n",
    "utils/core/seam.py": 'def f(g):\n    return g == "channel"\n',
    "utils/core/keyed.py": 'TAGS = {"weight": 1}\nPARAMS = {"weight": p for p in param_names}\n',
    "utils/cli/__init__.py": '"""Edge."""\n',
    "utils/cli/ok.py": "from argparse import ArgumentParser\nfrom utils.search import x\n",
    "utils/nodoc/__init__.py": "x = 1\n",
    "utils/unlisted/__init__.py": '"""Not a layer."""\n',
    "utils/unlisted/m.py": "from utils.core import errors\n",
    "utils/loose.py": "",
    "models/__init__.py": "from utils.core.registry import Registry\nfrom data import loader\n",
    "data/__init__.py": "from utils.runtime import stage\n",
    "utils/sparsity/__init__.py": '"""Seam."""\nif g == "weight": pass\n',
    "benchmarks/__init__.py": "",
    "benchmarks/bench_x.py": 'if g in ("weight", "channel"): pass\n',
    "script.py": "",
    "export.py": "",
    "tests/test_x.py": 'assert g == "weight"\n',
    "docs/architecture.md": ("| `utils/` | `benchmarks/` | `models/` | `utils/core/` | `utils/core/ok.py` |\n"
                             "| `utils/core/up.py`, `utils/core/lazy.py`, `utils/core/flags.py` |\n"
                             "| `utils/core/seam.py` `utils/core/keyed.py` `utils/cli/ok.py` `utils/loose.py` |\n"
                             "| `utils/sparsity/` `utils/nodoc/` `utils/unlisted/` `utils/unlisted/m.py` |\n"
                             "| `data/` | `utils/cli/` | `utils/sparsity/export.py` |\n"
                             "`benchmarks/bench_x.py` outside a table, `script.py` in prose\n"),
}
EXPECTED: dict[Rule, list[str]] = {
    loose_modules_in_utils: ["utils/loose.py", "utils/nodoc/__init__.py"],
    upward_imports: ["utils/core/up.py:1: imports utils.search (above core)",
                     "utils/core/up.py:2: imports utils.cli (above core)",
                     "utils/core/up.py:3: imports utils.runtime (above core)", "utils/unlisted/m.py:1",
                     "models/__init__.py:2: models imports data.loader", "data/__init__.py:1: imports utils.runtime"],
    imports_inside_functions: ["utils/core/lazy.py:3: imports models"],
    argparse_outside_the_cli: ["utils/core/flags.py:1: imports argparse"],
    granularity_names_outside_the_seam: ["benchmarks/bench_x.py:1:", "utils/core/keyed.py:1:",
                                         "utils/core/seam.py:2:"],
    modules_missing_from_the_map: ["benchmarks/bench_x.py", "export.py", "script.py"],
}


def test_each_rule_reports_every_offender(tmp_path: Path) -> None:
    """Each rule, run on a tree with known offences, names each of them (file and line) and nothing else."""
    for name, text in TREE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert set(EXPECTED) == set(RULES)
    for rule, expected in EXPECTED.items():
        found = rule(tmp_path)
        matched = [[offender for offender in found if offender.startswith(start)] for start in expected]
        assert len(found) == len(expected) and all(len(m) == 1 for m in matched), f"{rule.__name__}: {found}"
