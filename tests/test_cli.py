"""The ``optlayer`` command line: ``check`` exit codes 0 (valid), 1 (model error), 2 (usage).

Most cases call ``optlayer.cli.main(argv)`` in-process; one runs
``python -m optlayer`` in a subprocess to check the module entry point.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from optlayer import cli

ROOT = Path(__file__).resolve().parents[1]

PORTFOLIO = """# portfolio.opt
dim n = 10                     # symbolic size
param mu[n]
param L[n, n]
param gamma nonneg
var w[n]
minimize  -mu @ w + gamma * sum_squares(L @ w)
subject to
    budget: sum(w) == 1
    w >= 0
"""


@pytest.fixture
def model(tmp_path):
    def write(text: str, name: str = "model.opt") -> str:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return str(path)
    return write


def test_check_valid_model_prints_summary(model, capsys):
    path = model(PORTFOLIO)
    assert cli.main(["check", path]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: ok\n")
    assert "minimize (convex)" in out and "budget" in out and "n = 10" in out


def test_check_with_dims_binds_shapes(model, capsys):
    assert cli.main(["check", model(PORTFOLIO), "--dims", "n=4"]) == 0
    assert "mu[4]" in capsys.readouterr().out


@pytest.mark.parametrize("text, cls, where", [
    ("var x\nminimize x +\n", "OptSyntaxError", ":2:13:"),
    ("var x[3]\nminimize sum(y)\n", "OptTypeError", ":2:14:"),
    ("var x\nminimize sqrt(x)\n", "NonConvexError", ":2:10:"),
], ids=["syntax", "name", "dcp"])
def test_check_invalid_model_exits_1_with_caret(model, capsys, text, cls, where):
    path = model(text)
    assert cli.main(["check", path]) == 1
    err = capsys.readouterr().err
    first, source_line, caret = err.splitlines()[:3]
    assert first.startswith(f"optlayer.{cls}: {path}{where}")
    assert source_line.startswith("    2 | minimize")
    assert caret.strip().startswith("| ") and caret.rstrip().endswith("^")


def test_bad_dims_value_is_a_binding_error(model, capsys):
    assert cli.main(["check", model(PORTFOLIO), "--dims", "n=0"]) == 1
    err = capsys.readouterr().err
    assert "BindingError" in err and "dim n must be a positive integer" in err


def test_unknown_dim_is_a_binding_error(model, capsys):
    assert cli.main(["check", model(PORTFOLIO), "--dims", "k=3"]) == 1
    assert "unknown dim 'k'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    [],
    ["frobnicate", "x.opt"],
    ["check"],
    ["check", "MISSING.opt"],
    ["check", "MODEL", "--dims", "n"],
    ["check", "MODEL", "--dims", "n=ten"],
    ["check", "MODEL", "--dims", "n=3,n=4"],
    ["check", "MODEL", "--frob"],
], ids=["no-verb", "unknown-verb", "no-file", "missing-file", "dims-no-value",
        "dims-not-int", "dims-twice", "unknown-option"])
def test_usage_errors_exit_2(model, capsys, argv, tmp_path):
    path = model(PORTFOLIO)
    argv = [path if a == "MODEL" else str(tmp_path / a) if a == "MISSING.opt" else a
            for a in argv]
    assert cli.main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_help_exits_0(capsys):
    assert cli.main(["--help"]) == 0
    assert "check" in capsys.readouterr().out


def test_dims_parsing():
    assert cli.parse_dims(["n=3", "m=4,k=5"]) == {"n": 3, "m": 4, "k": 5}
    assert cli.parse_dims(None) is None


def test_verbs_registry_has_check():
    assert "check" in cli.VERBS and callable(cli.VERBS["check"].run)


def test_python_dash_m_entry_point():
    # one subprocess (importing torch dominates): the module entry point, stdin, exit 1
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    bad = subprocess.run([sys.executable, "-m", "optlayer", "check", "-"],
                         input="var x\nminimize x +\n", capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=120)
    assert bad.returncode == 1
    assert bad.stderr.startswith("optlayer.OptSyntaxError: <stdin>:2:13: expected an expression")
