"""optlayer.solvers.qp: implicit gradients (KKT) against finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optlayer.solvers.qp import solve_qp

from ._kernels import kernel  # noqa: F401  (autouse: every test runs on both kernels)

F64 = torch.float64


def _instance(seed, n, m, me, *, lp=False):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(n, n, generator=g, dtype=F64)
    Q = torch.zeros(n, n, dtype=F64) if lp else M @ M.T / n + 0.1 * torch.eye(n, dtype=F64)
    p = torch.randn(n, generator=g, dtype=F64)
    x0 = torch.randn(n, generator=g, dtype=F64)
    G = torch.randn(m, n, generator=g, dtype=F64) if m else None
    h = G @ x0 + torch.rand(m, generator=g, dtype=F64) if m else None
    if lp:  # a box keeps the LP bounded; its vertex is nondegenerate for this seed
        box = torch.eye(n, dtype=F64)
        G = torch.cat([box, -box]) if G is None else torch.cat([G, box, -box])
        hb = torch.cat([x0 + 1.0, 1.0 - x0])
        h = hb if h is None else torch.cat([h, hb])
    A = torch.randn(me, n, generator=g, dtype=F64) if me else None
    b = A @ x0 if me else None
    return Q, p, G, h, A, b


CASES = {
    "ineq-eq": lambda: _instance(0, 4, 5, 2),
    "ineq-only": lambda: _instance(1, 4, 6, 0),
    "eq-only": lambda: _instance(2, 4, 0, 2),
    "lp-box-eq": lambda: _instance(3, 3, 0, 1, lp=True),
}


def _outputs(*args):
    sol = solve_qp(*args, tol=1e-13, on_failure="raise")
    return tuple(t for t in (sol.x, sol.eq_dual, sol.ineq_dual, sol.slack) if t is not None)


@pytest.mark.parametrize("make", CASES.values(), ids=CASES.keys())
def test_gradcheck_float64(make):
    Q, p, G, h, A, b = make()
    given = [t for t in (Q, p, G, h, A, b) if t is not None]
    leaves = [t.clone().requires_grad_() for t in given]
    has_G, has_A = G is not None, A is not None

    def f(*xs):
        it = iter(xs)
        Q_, p_ = next(it), next(it)
        G_, h_ = (next(it), next(it)) if has_G else (None, None)
        A_, b_ = (next(it), next(it)) if has_A else (None, None)
        return _outputs(Q_, p_, G_, h_, A_, b_)

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_backward_reuses_the_forward_factorization(monkeypatch):
    Q, p, G, h, A, b = [t.clone().requires_grad_() for t in _instance(4, 5, 6, 2)]
    sol = solve_qp(Q, p, G, h, A, b)
    calls = []
    for name in ("cholesky_ex", "cholesky", "lu_factor", "lu_factor_ex", "solve", "inv"):
        real = getattr(torch.linalg, name)
        monkeypatch.setattr(torch.linalg, name,
                            lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k))
    (sol.x.sum() + sol.ineq_dual.sum()).backward()
    assert calls == []
    assert all(torch.isfinite(t.grad).all() for t in (Q, p, G, h, A, b))


def test_outputs_are_ordinary_tensors_and_the_backward_can_run_twice():
    # the forward solves in inference mode: its outputs must still take in-place ops and
    # what the backward reads must survive a first backward with retain_graph
    Q, p, G, h, A, b = [t.clone().requires_grad_() for t in _instance(4, 5, 6, 2)]
    sol = solve_qp(Q, p, G, h, A, b)
    assert not any(t.is_inference() for t in (sol.x, sol.eq_dual, sol.ineq_dual, sol.slack,
                                                 sol.status, sol.error))
    loss = (sol.x ** 2).sum()
    (g1,) = torch.autograd.grad(loss, G, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, G)
    assert torch.equal(g1, g2) and g1.abs().max() > 0
    sol.x.detach().add_(1.0)


def test_an_inplace_change_of_G_before_the_backward_is_caught():
    Q, p, G, h, A, b = [t.clone().requires_grad_() for t in _instance(4, 5, 6, 2)]
    Gc = G.detach().clone().requires_grad_()
    x = solve_qp(Q, p, Gc, h, A, b).x
    with torch.no_grad():
        Gc.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        x.sum().backward()


def test_second_order_through_the_qp_is_refused_not_silently_wrong():
    Q, p, G, h, A, b = [t.clone().requires_grad_() for t in _instance(4, 5, 6, 2)]
    x = solve_qp(Q, p, G, h, A, b).x
    (gp,) = torch.autograd.grad((x ** 2).sum(), p, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gp.sum().backward()


def test_weakly_active_constraint_gives_a_finite_one_sided_gradient():
    # minimize 1/2 |x - a|^2 s.t. x1 <= 1 with a1 = 1: x1 = 1, z1 = 0, s1 = 0
    a = torch.tensor([1.0, 0.3], dtype=F64, requires_grad=True)
    Q = torch.eye(2, dtype=F64)
    G = torch.tensor([[1.0, 0.0]], dtype=F64)
    h = torch.tensor([1.0], dtype=F64, requires_grad=True)
    sol = solve_qp(Q, -a, G, h, on_failure="raise")
    sol.x[0].backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(h.grad).all()
    # one-sided: inactive side dx1/da1 = 1, active side dx1/da1 = 0 (dx1/dh = 1)
    assert min(abs(a.grad[0].item()), abs(a.grad[0].item() - 1.0)) <= 1e-8
    assert a.grad[0].item() + h.grad[0].item() == pytest.approx(1.0, abs=1e-6)
    assert a.grad[1].item() == 0.0


def test_broadcast_parameter_gradient_is_summed_over_the_batch():
    Q, p, G, h, A, b = _instance(5, 4, 5, 1)
    ps = torch.stack([p, p + 0.2, p - 0.3])
    G1 = G.clone().requires_grad_()
    c = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    (solve_qp(Q, ps, G1, h, A, b).x * c).sum().backward()
    total = torch.zeros_like(G)
    for i in range(3):
        Gi = G.clone().requires_grad_()
        (solve_qp(Q, ps[i], Gi, h, A, b).x * c[i]).sum().backward()
        total += Gi.grad
    torch.testing.assert_close(G1.grad, total, atol=1e-9, rtol=1e-9)


def test_nonfinite_item_gets_zero_gradient_and_shared_gradients_stay_finite():
    Q, p, G, h, A, b = _instance(6, 4, 5, 1)
    ps = torch.stack([p, p]).clone()
    ps[1, 2] = float("nan")
    ps.requires_grad_()
    G1 = G.clone().requires_grad_()
    sol = solve_qp(Q, ps, G1, h, A, b, on_failure="ignore")
    assert sol.status.tolist() == [0, 6]
    sol.x[0].sum().backward()
    assert torch.isfinite(G1.grad).all() and torch.isfinite(ps.grad[0]).all()
    assert (ps.grad[1] == 0).all()


def test_gradient_matches_central_differences_of_the_tight_solve():
    # an independent check of the formula (not gradcheck's own machinery)
    Q, p, G, h, A, b = _instance(7, 5, 6, 2)
    w = torch.randn(5, dtype=F64, generator=torch.Generator().manual_seed(1))
    hr = h.clone().requires_grad_()
    (solve_qp(Q, p, G, hr, A, b, tol=1e-13).x @ w).backward()
    fd = np.zeros(6)
    for i in range(6):
        e = torch.zeros(6, dtype=F64)
        e[i] = 1e-6
        up = solve_qp(Q, p, G, h + e, A, b, tol=1e-13).x @ w
        dn = solve_qp(Q, p, G, h - e, A, b, tol=1e-13).x @ w
        fd[i] = ((up - dn) / 2e-6).item()
    np.testing.assert_allclose(hr.grad.numpy(), fd, atol=1e-7, rtol=0)


@pytest.mark.parametrize("asked", [("p",), ("G",), ("h",), ("G", "h"), ("Q", "A"), ("A", "b")])
def test_gradients_of_some_inputs_equal_those_of_all(asked):
    # the backward computes only the gradients asked for; each must equal its value
    # when every input asks (a cotangent for every output, slack included)
    names = ("Q", "p", "G", "h", "A", "b")
    data = dict(zip(names, _instance(8, 5, 6, 2), strict=True))
    w = torch.randn(5, dtype=F64, generator=torch.Generator().manual_seed(2))

    def grads(which):
        ins = {k: v.clone().requires_grad_(k in which) for k, v in data.items()}
        sol = solve_qp(*ins.values(), tol=1e-12)
        loss = sol.x @ w + sol.eq_dual.sum() + sol.ineq_dual.sum() + (sol.slack ** 2).sum()
        return dict(zip(which, torch.autograd.grad(loss, [ins[k] for k in which]),
                        strict=True))

    every, some = grads(names), grads(asked)
    for k in asked:
        torch.testing.assert_close(some[k], every[k], atol=1e-12, rtol=1e-12)
        assert some[k].abs().max() > 0
