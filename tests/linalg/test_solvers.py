"""Every linear solver against torch.linalg.solve: SPD, nonsymmetric, batched, tuple rhs.

The catalog declares which matrices each solver supports (CG and Cholesky need
symmetric positive definite ones); the grid is generated from it.
"""

from dataclasses import dataclass

import pytest
import torch

import optlayer as ol
from optlayer import linalg

DT = torch.float64


@dataclass(frozen=True)
class Entry:
    name: str
    solve: object
    spd_only: bool
    tol: float  # accuracy expected against torch.linalg.solve at default settings


SOLVERS = [
    Entry("cg", linalg.solve_cg, True, 1e-8),
    Entry("cholesky", linalg.solve_cholesky, True, 1e-10),
    Entry("gmres", linalg.solve_gmres, False, 1e-8),
    Entry("bicgstab", linalg.solve_bicgstab, False, 1e-8),
    Entry("normal_cg", linalg.solve_normal_cg, False, 1e-8),
    Entry("lu", linalg.solve_lu, False, 1e-10),
    Entry("lstsq", linalg.solve_lstsq, False, 1e-10),
]


def _spd(batch, n, seed):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(*batch, n, n, generator=g, dtype=DT)
    return M @ M.mT / n + torch.eye(n, dtype=DT)


def _nonsym(batch, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*batch, n, n, generator=g, dtype=DT) / n**0.5 + 2 * torch.eye(n, dtype=DT)


SYSTEMS = {
    "spd": lambda: _spd((), 12, 0),
    "spd_batched": lambda: _spd((3, 2), 9, 1),
    "nonsym": lambda: _nonsym((), 12, 2),
    "nonsym_batched": lambda: _nonsym((4,), 10, 3),
}
GRID = [
    pytest.param(e, s, id=f"{e.name}-{s}")
    for e in SOLVERS
    for s in SYSTEMS
    if not (e.spd_only and s.startswith("nonsym"))
]


def _mv(A):
    return lambda x: (A @ x.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("entry,system", GRID)
def test_against_torch_linalg_solve(entry, system):
    A = SYSTEMS[system]()
    b = torch.randn(A.shape[:-1], generator=torch.Generator().manual_seed(5), dtype=DT)
    x = entry.solve(_mv(A), b)
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=0, atol=entry.tol)


@pytest.mark.parametrize("entry", SOLVERS, ids=[e.name for e in SOLVERS])
def test_tuple_right_hand_side(entry):
    """b = (b1, b2) with A acting on the concatenation; x comes back as a tuple."""
    A = _spd((2,), 7, 6)  # SPD suits every solver
    b = torch.randn(2, 7, generator=torch.Generator().manual_seed(7), dtype=DT)

    def matvec(xs):
        y = _mv(A)(torch.cat(xs, dim=-1))
        return (y[..., :3], y[..., 3:])

    x = entry.solve(matvec, (b[..., :3], b[..., 3:]))
    assert isinstance(x, tuple) and x[0].shape == (2, 3) and x[1].shape == (2, 4)
    torch.testing.assert_close(torch.cat(x, -1), torch.linalg.solve(A, b), rtol=0, atol=entry.tol)


@pytest.mark.parametrize("entry", SOLVERS, ids=[e.name for e in SOLVERS])
def test_ridge_and_matrix_operator(entry):
    A = _spd((), 8, 8)
    b = torch.randn(8, generator=torch.Generator().manual_seed(9), dtype=DT)
    x = entry.solve(A, b, ridge=0.5)
    want = torch.linalg.solve(A + 0.5 * torch.eye(8, dtype=DT), b)
    torch.testing.assert_close(x, want, rtol=0, atol=entry.tol)


@pytest.mark.parametrize("entry", SOLVERS, ids=[e.name for e in SOLVERS])
def test_vmap_and_float32(entry):
    A = _spd((), 6, 10)
    bs = torch.randn(4, 6, generator=torch.Generator().manual_seed(11), dtype=DT)
    xs = torch.func.vmap(lambda b: entry.solve(_mv(A), b))(bs)
    torch.testing.assert_close(xs, torch.linalg.solve(A, bs.mT).mT, rtol=0, atol=entry.tol)
    x32 = entry.solve(_mv(A.float()), bs[0].float())
    assert x32.dtype == torch.float32
    torch.testing.assert_close(x32, torch.linalg.solve(A, bs[0]).float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("entry", SOLVERS, ids=[e.name for e in SOLVERS])
def test_zero_rhs_gives_zero(entry):
    A = _spd((), 5, 12)
    x = entry.solve(_mv(A), torch.zeros(5, dtype=DT))
    assert torch.equal(x, torch.zeros(5, dtype=DT))


KRYLOV = [e for e in SOLVERS if e.name in ("cg", "gmres", "bicgstab", "normal_cg")]


@pytest.mark.parametrize("entry", KRYLOV, ids=[e.name for e in KRYLOV])
def test_init_is_used(entry):
    A = _spd((), 10, 13)
    b = torch.randn(10, generator=torch.Generator().manual_seed(14), dtype=DT)
    exact = torch.linalg.solve(A, b)
    x = entry.solve(_mv(A), b, init=exact, maxiter=1)  # already solved: no warning
    torch.testing.assert_close(x, exact, rtol=0, atol=1e-12)


@pytest.mark.parametrize("entry", KRYLOV, ids=[e.name for e in KRYLOV])
def test_non_convergence_warns_with_residual(entry):
    A = _spd((3,), 40, 15) + torch.diag(torch.logspace(0, 4, 40, dtype=DT))  # ill-conditioned
    b = torch.randn(3, 40, generator=torch.Generator().manual_seed(16), dtype=DT)
    with pytest.warns(ol.OptimizationWarning, match=r"worst relative residual .* = \d") as rec:
        x = entry.solve(_mv(A), b, maxiter=2)
    assert "MAX_ITER at batch index 0, 1, 2" in str(rec[0].message)
    assert torch.isfinite(x).all() and x.abs().sum() > 0  # a partial answer, not a silent zero


def test_non_convergence_raise_policy():
    A = _spd((), 40, 17) + torch.diag(torch.logspace(0, 4, 40, dtype=DT))
    b = torch.ones(40, dtype=DT)
    with pytest.raises(ol.SolverError, match="solve_cg") as e:
        linalg.solve_cg(_mv(A), b, maxiter=2, on_failure="raise")
    assert e.value.indices == [0]


def test_singular_matrix_lu_warns():
    A = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=DT)
    with pytest.warns(ol.OptimizationWarning, match="solve_lu"):
        linalg.solve_lu(A, torch.tensor([1.0, 0.0], dtype=DT))


def test_cholesky_rejects_indefinite_and_nonsymmetric():
    indefinite = torch.diag(torch.tensor([1.0, -1.0], dtype=DT))
    with pytest.warns(ol.OptimizationWarning, match="not positive definite"):
        linalg.solve_cholesky(indefinite, torch.ones(2, dtype=DT))
    nonsym = torch.tensor([[2.0, 1.0], [0.0, 2.0]], dtype=DT)
    with pytest.warns(ol.OptimizationWarning, match="not symmetric"):
        linalg.solve_cholesky(nonsym, torch.ones(2, dtype=DT))


def test_bad_arguments():
    b = torch.ones(3, dtype=DT)
    with pytest.raises(ol.OptTypeError, match="matvec must be a callable"):
        linalg.solve_cg("A", b)
    with pytest.raises(ol.OptTypeError, match="matrix has shape"):
        linalg.solve_lu(torch.eye(2, dtype=DT), b)
    with pytest.raises(ol.OptTypeError, match="at least one dimension"):
        linalg.solve_cg(lambda v: v, torch.tensor(1.0))
    with pytest.raises(ValueError, match="maxiter must be a positive integer"):
        linalg.solve_gmres(lambda v: v, b, maxiter=0)
    with pytest.raises(ValueError, match="on_failure"):
        linalg.solve_cg(lambda v: v, b, on_failure="mask")


@pytest.mark.parametrize("entry", SOLVERS, ids=[e.name for e in SOLVERS])
def test_plugs_into_custom_root(entry):
    """Any solver plugs into custom_root(solve=...): same Jacobian as the closed form."""
    A = _spd((), 6, 18)

    @ol.custom_root(lambda x, b: _mv(A)(x) - b, solve=entry.solve)
    def solver(init, b):
        return torch.linalg.solve(A, b)

    b = torch.ones(6, dtype=DT)
    J = torch.func.jacrev(solver, argnums=1)(None, b)
    torch.testing.assert_close(J, torch.linalg.inv(A), rtol=0, atol=entry.tol)
