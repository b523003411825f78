"""The import layering of DESIGN.md section 4 is a contract the suite enforces.

The contract is written in pyproject.toml ([tool.importlinter]); a wrong-way
import (say, optlayer.linalg importing optlayer.solvers) makes this test fail.
"""

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _lint_imports(cwd: pathlib.Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is missing: install the dev extra (pip install -e '.[dev]')")
    return subprocess.run(
        [exe, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(cwd), "PATH": str(pathlib.Path(sys.executable).parent)},
    )


def test_layering_contract_holds():
    res = _lint_imports(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "KEPT" in res.stdout


def test_layering_contract_catches_a_wrong_way_import(tmp_path):
    shutil.copytree(ROOT / "optlayer", tmp_path / "optlayer")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    bad = tmp_path / "optlayer" / "linalg" / "_wrong_way.py"
    bad.write_text("import optlayer.solvers  # linalg must not import solvers\n")
    res = _lint_imports(tmp_path)
    assert res.returncode != 0
    assert "BROKEN" in res.stdout
