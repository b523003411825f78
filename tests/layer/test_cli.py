"""`optlayer explain` and `optlayer solve` (DESIGN.md section 8)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from optlayer.cli import main

PROBLEMS = Path(__file__).parents[2] / "examples" / "problems"


@pytest.mark.parametrize("args,solver", [
    ([], "solver: forward-backward Newton"),              # quadratic f, 10 unknowns
    (["--dims", "n=300"], "solver: FISTA with backtracking and adaptive restart\n"),
])
def test_explain_prints_method_map_and_solver(capsys, args, solver):
    # the solver line names the one Program.solve runs at the layer's size
    assert main(["explain", str(PROBLEMS / "lasso.opt"), *args]) == 0
    out = capsys.readouterr().out
    assert "method: prox_grad" in out and "optimality map:" in out and solver in out


@pytest.mark.parametrize("name,solver", [
    ("cone_sets", "solver: accelerated projected gradient (FISTA, backtracking, adaptive "
                  "restart), with Newton steps on the fixed-point residual"),
    ("softplus_box", "solver: semismooth Newton on the normal map"),
    ("logistic_regression", "solver: Newton with Armijo backtracking"),
    ("kl_projection", "solver: exponentiated gradient with backtracking, with Newton steps"),
])
def test_explain_names_the_solver_of_each_method(capsys, name, solver):
    assert main(["explain", str(PROBLEMS / f"{name}.opt")]) == 0
    assert solver in capsys.readouterr().out


def test_solve_random_data_prints_solution_status_timing(capsys):
    assert main(["solve", str(PROBLEMS / "sparsemax.opt"), "--dims", "n=4"]) == 0
    out = capsys.readouterr().out
    assert "method projection" in out and "x =" in out
    assert "status: OPTIMAL" in out and "time:" in out


def test_solve_with_json_data(tmp_path, capsys):
    data = tmp_path / "p.json"
    data.write_text(json.dumps({"y": [0.2, 0.4, -1.0]}))
    assert main(["solve", str(PROBLEMS / "sparsemax.opt"), "--dims", "n=3",
                 "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "[0.400000, 0.600000, 0.000000]" in out.replace("-0.000000", "0.000000")


def test_solve_with_npz_data_missing_a_parameter(tmp_path, capsys):
    data = tmp_path / "p.npz"
    np.savez(data, t=np.zeros(8), lam=np.ones(()))
    assert main(["solve", str(PROBLEMS / "lasso.opt"), "--data", str(data)]) == 1
    assert "missing value for parameter 'X'" in capsys.readouterr().err


def test_solve_bad_data_file_is_a_usage_error(tmp_path, capsys):
    bad = tmp_path / "p.txt"
    bad.write_text("1 2 3")
    assert main(["solve", str(PROBLEMS / "lasso.opt"), "--data", str(bad)]) == 2
    assert "--data expects a .npz or .json" in capsys.readouterr().err


def test_python_dash_m_solve():
    r = subprocess.run([sys.executable, "-m", "optlayer", "solve",
                        str(PROBLEMS / "portfolio.opt")],
                       capture_output=True, text=True, cwd=Path(__file__).parents[2], timeout=120)
    assert r.returncode == 0, r.stderr
    assert "method kkt" in r.stdout and "status: OPTIMAL" in r.stdout
