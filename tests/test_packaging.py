"""The checkout is an installed package (pyproject.toml, `pip install -e .` by setup.sh): scripts and
recipes import `rewire_lib`, `rewire_study`, `data_prep`, `bench` from anywhere, and no committed script
edits `sys.path`."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCANNED = ("rewire_lib", "rewire_study", "data_prep", "recipes", "bench")


def test_packages_import_from_this_checkout_outside_the_repo(tmp_path):
    """Run from an unrelated folder with no PYTHONPATH: only the editable install can find them."""
    packages = ("rewire_lib", "rewire_study", "data_prep", "bench")
    code = f"import {', '.join(packages)}, rewire_lib.downstream; " + "; ".join(f"print({p}.__file__)" for p in packages)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"not installed? run setup.sh (pip install -e . --no-deps): {out.stderr[-500:]}"
    found = [Path(line).resolve() for line in out.stdout.split()]
    assert found == [REPO / p / "__init__.py" for p in packages]


def test_preparer_runs_as_a_script_from_another_folder(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "data_prep" / "fsdd.py"), "--help"], cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-500:]
    assert "--save_folder" in out.stdout


def _committed_python_files():
    listed = subprocess.run(["git", "ls-files", "--", *(f"{d}/*.py" for d in SCANNED)], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    return [REPO / p for p in listed]


def test_no_script_edits_sys_path():
    files = _committed_python_files()
    assert any(p.parts[-2:] == ("data_prep", "common.py") for p in files)  # the scan sees the files
    offenders = [f"{p.relative_to(REPO)}:{n}" for p in files if p.is_file()
                 for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if "sys.path.insert" in line]
    assert not offenders, "sys.path.insert left in (the checkout is installed; import normally): " + ", ".join(offenders)
