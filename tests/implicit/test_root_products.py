"""root_vjp and root_jvp (the lower-level products) against closed forms."""

import torch
from conftest import CATALOG, assert_trees_close

import optlayer as ol

KKT = next(p for p in CATALOG if p.name == "kkt_eq_qp")
DT = torch.float64


def _kkt_F(sol, c, E, d, Q):
    z, nu = sol
    return (Q @ z + c + E.T @ nu, E @ z - d)


def _Q():
    # the same Q as the catalog's KKT problem (rebuilt from its generator seed)
    g = torch.Generator().manual_seed(2)
    M = torch.randn(5, 5, generator=g, dtype=DT)
    return M @ M.T + 5 * torch.eye(5, dtype=DT)


def test_root_vjp_tuple_solution_matches_closed_form():
    c, E, d = KKT.args
    sol = KKT.closed(c, E, d)
    g = torch.Generator().manual_seed(3)
    cot = tuple(torch.randn(t.shape, generator=g, dtype=DT) for t in sol)
    got = ol.root_vjp(_kkt_F, sol, (c, E, d, _Q()), cot)
    _, vjp_c = torch.func.vjp(KKT.closed, c, E, d)
    assert_trees_close(got[:3], vjp_c(cot))
    assert got[3] is not None  # Q is a tensor argument too


def test_root_jvp_tuple_solution_with_none_tangent():
    c, E, d = KKT.args
    sol = KKT.closed(c, E, d)
    tc = torch.ones_like(c)
    got = ol.root_jvp(_kkt_F, sol, (c, E, d, _Q()), (tc, None, None, None))
    _, want = torch.func.jvp(lambda c_: KKT.closed(c_, E, d), (c,), (tc,))
    assert_trees_close(got, want)


def test_root_vjp_non_tensor_args_get_none():
    F = lambda x, theta, scale, name: scale * x - theta  # noqa: E731
    theta = torch.tensor([1.0, 2.0], dtype=DT)
    got = ol.root_vjp(F, theta / 3.0, (theta, 3.0, "label"), torch.ones(2, dtype=DT))
    assert got[1] is None and got[2] is None
    torch.testing.assert_close(got[0], torch.full((2,), 1 / 3.0, dtype=DT))


def test_jacrev_and_vmap_at_n200():
    """The implicit core under jacrev and vmap at n = 200 (the size where jacrev
    through an LU solve was seen to fail with MKL in torch 2.13)."""
    n, m = 200, 60
    g = torch.Generator().manual_seed(7)
    A = torch.randn(n, n, generator=g, dtype=DT) / n**0.5
    H = A @ A.T + torch.eye(n, dtype=DT)
    B = torch.randn(n, m, generator=g, dtype=DT)

    def F(x, theta):  # stationarity of ½ xᵀHx - (Bθ)ᵀx
        return H @ x - B @ theta

    @ol.custom_root(F)
    def solver(init, theta):
        return torch.linalg.solve(H, B @ theta)

    theta = torch.randn(m, generator=g, dtype=DT)
    J = torch.func.jacrev(solver, argnums=1)(None, theta)
    want = torch.linalg.solve(H, B)
    torch.testing.assert_close(J, want, rtol=0, atol=1e-8)
    thetas = torch.randn(3, m, generator=g, dtype=DT)
    Js = torch.func.vmap(torch.func.jacrev(solver, argnums=1), in_dims=(None, 0))(None, thetas)
    torch.testing.assert_close(Js, want.expand(3, n, m), rtol=0, atol=1e-8)


def test_default_solve_switches_to_gmres_above_dense_max(monkeypatch):
    """Above defaults.IMPLICIT_DENSE_MAX unknowns the default backward solve is GMRES."""
    from optlayer import defaults
    from optlayer.implicit import _function

    calls = []
    real = _function.solve_gmres
    monkeypatch.setattr(_function, "solve_gmres", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(defaults, "IMPLICIT_DENSE_MAX", 3)
    A = torch.tensor([[3.0, 1.0, 0, 0], [0, 2.0, 1.0, 0], [0, 0, 4.0, 1.0], [1.0, 0, 0, 5.0]],
                     dtype=DT)

    @ol.custom_root(lambda x, b: A @ x - b)
    def solver(init, b):
        return torch.linalg.solve(A, b)

    J = torch.func.jacrev(solver, argnums=1)(None, torch.ones(4, dtype=DT))
    assert calls, "GMRES was not used"
    torch.testing.assert_close(J, torch.linalg.inv(A), rtol=0, atol=1e-8)
