"""rewire_lib's packages keep the order docs/CONVENTIONS.md gives them: a package imports only packages above it
(`files` none; the three stage packages never each other), and the library never imports the study or a recipe.
Lazy imports inside functions count too: they are cycles waiting for their first call."""
import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "rewire_lib"
ORDER = [{"files"}, {"data"}, {"models"}, {"views"}, {"training"}, {"analysis"}, {"rewiring", "downstream", "pretrain"}]


def rank(package: str):
    return next((i for i, group in enumerate(ORDER) if package in group), None)


def imported_modules(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def layer_violations(lib: Path = LIB) -> list:
    found = []
    for path in sorted(lib.rglob("*.py")):
        parts = path.relative_to(lib).parts
        package = parts[0] if len(parts) > 1 else None
        for module in imported_modules(path):
            top = module.split(".")
            if top[0] in ("rewire_study", "recipes", "bench", "data_prep"):
                found.append(f"{path.relative_to(lib)} imports {module}: the library imports none of these")
            elif top[0] == "rewire_lib" and len(top) > 1 and package and top[1] != package:
                if rank(top[1]) is None or rank(package) is None or rank(top[1]) >= rank(package):
                    found.append(f"{path.relative_to(lib)} imports {module}: {package}/ may import only packages "
                                 "above it in docs/CONVENTIONS.md's table")
    return found


def test_every_package_is_in_the_table():
    packages = {p.name for p in LIB.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages == set().union(*ORDER)


def test_packages_import_only_those_above_them():
    assert layer_violations() == []


def test_a_lower_package_importing_a_higher_one_is_found(tmp_path):
    for package in ("files", "downstream"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "files" / "bad.py").write_text("def f():\n    from rewire_lib.downstream.brain import X\n")
    assert layer_violations(tmp_path) == [
        "files/bad.py imports rewire_lib.downstream.brain: files/ may import only packages above it in "
        "docs/CONVENTIONS.md's table"]
