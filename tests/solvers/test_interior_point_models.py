"""Derivative models of ConvexInteriorPoint: every data model against autograd on the same
function (values, ∇(λᵀg), Jacobian, Hessian of λᵀg to 1e-12), solves with models against
solves without, and the models the compiler builds for the convex examples."""

from pathlib import Path

import pytest
import torch

import optlayer as ol
from optlayer.compiler.canon import _models, _start, row_functions
from optlayer.compiler.lower import expand_params
from optlayer.layer import random_params
from optlayer.solvers import ConvexInteriorPoint
from optlayer.solvers.convex_models import (
    ELEMENTWISE,
    AffineRows,
    AutogradObjective,
    AutogradRows,
    NormRows,
    PhaseOneRows,
    QuadOverLinRows,
    QuadraticObjective,
    QuadraticRows,
    SmoothAtomRows,
    StackedRows,
)

D = torch.float64
B, N = 3, 4
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "problems"


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0):
    return torch.randn(*shape, dtype=D, generator=_gen(seed))


def _affine_case():
    G, h = _randn(B, 5, N, seed=1), _randn(B, 5, seed=2)
    return AffineRows(G, h), lambda x, _p: (G * x.unsqueeze(-2)).sum(-1) - h, 5


def _quadratic_case():
    M = _randn(B, 2, N, N, seed=3)
    Q = M @ M.mT
    p, c = _randn(B, 2, N, seed=4), _randn(B, 2, seed=5)

    def fun(x, _p):
        Qx = (Q * x[:, None, None, :]).sum(-1)
        return 0.5 * (Qx * x[:, None, :]).sum(-1) + (p * x[:, None, :]).sum(-1) + c

    return QuadraticRows(Q, p, c), fun, 2


def _cone_case():
    U, u0 = _randn(B, 6, N, seed=6), _randn(B, 6, seed=7)
    a, b = _randn(B, N, seed=8), 5.0 + _randn(B, seed=9).abs()  # s > 0 near x = 0

    def fun(x, _p):
        u = (U * x.unsqueeze(-2)).sum(-1) + u0
        s = (a * x).sum(-1) + b
        return ((u * u).sum(-1) / s - s).unsqueeze(-1)

    return QuadOverLinRows(U, u0, a, b), fun, 1


def _norm_case():
    U, u0 = _randn(B, 6, N, seed=20), _randn(B, 6, seed=21)
    a, b = _randn(B, N, seed=22), _randn(B, seed=23)

    def fun(x, _p):
        u = (U * x.unsqueeze(-2)).sum(-1) + u0
        return (torch.linalg.vector_norm(u, dim=-1) - (a * x).sum(-1) - b).unsqueeze(-1)

    return NormRows(U, u0, a, b), fun, 1


def _smooth_case(name, reduce, static=()):
    """``c φ(Ux + u₀) + Gx - h``; ``u`` kept positive near x = 0 (for log, sqrt, power)."""
    def case():
        k = N if reduce == "none" else 5
        r = k if reduce == "none" else 1
        U, u0 = 0.3 * _randn(B, k, N, seed=24), 2.0 + _randn(B, k, seed=25).abs()
        c = _randn(B, k if reduce != "logsumexp" else 1, seed=26)
        G, h = _randn(B, r, N, seed=27), _randn(B, r, seed=28)
        phi = None if reduce == "logsumexp" else (lambda u: ELEMENTWISE[name](u, *static))

        def fun(x, _p):
            u = (U * x.unsqueeze(-2)).sum(-1) + u0
            if reduce == "logsumexp":
                v = c * torch.logsumexp(u, -1, keepdim=True)
            else:
                v = c * {"exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt,
                         "softplus": torch.nn.functional.softplus,
                         "power": lambda t: t ** static[0] if static else t,
                         "neg_xlogx": lambda t: -t * torch.log(t),
                         "huber": lambda t: torch.where(t.abs() <= static[0], t * t,
                                                        2 * static[0] * t.abs()
                                                        - static[0] ** 2)}[name](u)
                if reduce == "sum":
                    v = v.sum(-1, keepdim=True)
            return v + (G * x.unsqueeze(-2)).sum(-1) - h

        return SmoothAtomRows(phi, reduce, U, u0, c, G, h), fun, r

    return case


def _stacked_case():
    parts = [_affine_case(), _quadratic_case(), _cone_case()]
    order = torch.tensor([3, 0, 7, 1, 5, 2, 6, 4])  # rows out of stacking order

    def fun(x, p):
        return torch.cat([f(x, p) for _, f, _ in parts], -1)[..., order]

    return StackedRows([m for m, _, _ in parts], [k for _, _, k in parts], order), fun, 8


def _phase_one_case():
    inner, fun, k = _cone_case()

    def fun1(z, p):
        s = z[..., -1:]
        return torch.cat([fun(z[..., :-1], p) - s, -s - 1.0], -1)

    return PhaseOneRows(inner), fun1, k + 1


SMOOTH = [("logsumexp", "logsumexp", ()), ("exp", "none", ()), ("log", "sum", ()),
          ("sqrt", "none", ()), ("softplus", "sum", ()), ("power", "none", (2.5,)),
          ("neg_xlogx", "sum", ()), ("huber", "sum", (2.5,))]   # u ~ 2-4: both pieces
ROWS = {"affine": _affine_case, "quadratic": _quadratic_case, "cone": _cone_case,
        "norm": _norm_case, "stacked": _stacked_case, "phase_one": _phase_one_case,
        **{f"smooth_{name}": _smooth_case(name, red, st) for name, red, st in SMOOTH}}


def test_power_is_finite_at_zero_where_its_value_is():
    # u^p at u = 0 is 0 for p > 0 (its curvature may be infinite there, as autograd's)
    u = torch.zeros(3, dtype=D)
    for p in (1.5, 3.0, 0.5):
        v, d1, _ = ELEMENTWISE["power"](u, p)
        assert v.tolist() == [0.0] * 3 and bool(torch.isfinite(d1).all()) == (p >= 1)


def test_every_elementwise_function_has_a_case():
    assert {name for name, _, _ in SMOOTH} == set(ELEMENTWISE) - {"logistic"} | {"logsumexp"}


@pytest.mark.parametrize("case", list(ROWS.values()), ids=list(ROWS))
def test_row_model_matches_autograd(case):
    model, fun, r = case()
    n = N + 1 if isinstance(model, PhaseOneRows) else N
    x = 0.3 * _randn(B, n, seed=10)
    lam = _randn(B, r, seed=11).abs() + 0.1
    ref = AutogradRows(fun, None)
    torch.testing.assert_close(model.values(x), ref.values(x), rtol=0, atol=1e-12)
    for got, want in zip(model.first(x, lam), ref.first(x, lam), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    g, J, H = model.second(x, lam)
    g0, J0, H0 = ref.second(x, lam)
    torch.testing.assert_close(g, g0, rtol=0, atol=1e-12)
    torch.testing.assert_close(J.expand_as(J0), J0, rtol=0, atol=1e-12)
    zero = torch.zeros(B, x.shape[-1], x.shape[-1], dtype=D)  # None: no curvature
    torch.testing.assert_close(zero if H is None else H, zero if H0 is None else H0,
                               rtol=0, atol=1e-11)


def test_quadratic_objective_matches_autograd():
    M, p = _randn(B, N, N, seed=12), _randn(B, N, seed=13)
    Q = M @ M.mT

    def f(x, _p):
        return 0.5 * ((Q * x.unsqueeze(-2)).sum(-1) * x).sum(-1) + (p * x).sum(-1)

    x = _randn(B, N, seed=14)
    g, H = QuadraticObjective(Q, p).grad_hess(x)
    g0, H0 = AutogradObjective(f, None).grad_hess(x)
    torch.testing.assert_close(g, g0, rtol=0, atol=1e-12)
    torch.testing.assert_close(H, H0, rtol=0, atol=1e-12)


def _ball_and_halfspaces():
    """min ½‖x - c‖² s.t. Gx <= h, ‖x‖² <= 1 from an infeasible start (phase I runs):
    ``(f, g, c, x0, models)``, ``models`` the data models of the same functions."""
    G, h = _randn(B, 3, N, seed=15), _randn(B, 3, seed=16).abs() + 0.1
    c = 2.0 * _randn(B, N, seed=17)
    Q = 2.0 * torch.eye(N, dtype=D).expand(B, 1, N, N)

    def f(x, c):
        return 0.5 * ((x - c) ** 2).sum(-1)

    def g(x, _p=None):
        return torch.cat([(G * x.unsqueeze(-2)).sum(-1) - h, (x * x).sum(-1, keepdim=True) - 1],
                         -1)

    rows = StackedRows([AffineRows(G, h), QuadraticRows(Q, torch.zeros(B, 1, N, dtype=D),
                                                        -torch.ones(B, 1, dtype=D))], [3, 1])
    models = {"objective_model": lambda c: QuadraticObjective(torch.eye(N, dtype=D), -c),
              "ineq_model": lambda _p: rows}
    return f, g, c, torch.full((B, N), 3.0, dtype=D), models


def test_solver_with_data_models_matches_autograd_models():
    f, g, c, x0, models = _ball_and_halfspaces()
    plain = ConvexInteriorPoint(f, g, tol=1e-11, on_failure="raise").run(x0, c, None, None)
    fast = ConvexInteriorPoint(f, g, tol=1e-11, on_failure="raise", **models).run(
        x0, c, None, None)
    for a, b in zip(fast.params, plain.params, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-8)


@pytest.mark.parametrize("models", ["autograd", "data"])
def test_loop_runs_in_inference_mode_with_the_no_grad_solution(models):
    # in inference mode (implicit_diff off) the loop stays there: its results are inference
    # tensors; the autograd models (and phase I on them, from an infeasible start) step out
    # of it for each evaluation; the solution is the one of a no_grad run
    f, g, c, x0, data = _ball_and_halfspaces()
    extra = data if models == "data" else {}
    ip = ConvexInteriorPoint(f, g, tol=1e-11, on_failure="raise", implicit_diff=False,
                             **extra)
    with torch.no_grad():
        ref = ip.run(x0, c, None, None)
    with torch.inference_mode():
        out = ip.run(x0, c, None, None)
    assert all(t.is_inference() for t in out.params)
    assert out.state.status.tolist() == [0] * B
    for a, b in zip(out.params, ref.params, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # with implicit_diff the loop leaves inference mode, as every solver's does
    with torch.inference_mode():
        x = ConvexInteriorPoint(f, g, tol=1e-11, **extra).run(x0, c, None, None).params[0]
    assert not x.is_inference()
    torch.testing.assert_close(x, ref.params[0], rtol=0, atol=1e-12)


# the row models each example's rows get (affine rows as data, quadratic rows as data, the
# cone row and the smooth atoms logsumexp and sum of softplus in closed form)
PARTS = {
    "sqrt_lasso": ["AffineRows", "QuadOverLinRows"],
    "robust_ls": ["QuadraticRows"],
    "logsumexp_constrained": ["SmoothAtomRows", "SmoothAtomRows"],
    "risk_portfolio": ["AffineRows", "QuadraticRows"],
}


@pytest.mark.parametrize("name", list(PARTS), ids=list(PARTS))
def test_compiled_models_match_autograd_of_the_rows(name):
    layer = ol.load(EXAMPLES / f"{name}.opt", method="kkt")
    prog = layer.program
    P, b, _ = expand_params(layer.problem, random_params(layer.problem, batch=B, seed=0))
    n = prog.layout.size
    models = _models(prog, P, b, n, D, torch.device("cpu"))
    gfun = row_functions(prog)[0]
    # a point with every epigraph variable well inside its rows (the solver's start)
    z = _start(prog, P, b, n, D, "cpu", 0.1 * _randn(b, n, seed=18)) + 0.0
    lam = _randn(b, gfun(z, P).shape[-1], seed=19).abs() + 0.1
    rows, ref = models["ineq_model"](P), AutogradRows(gfun, P)
    assert [type(m).__name__ for m in rows.parts] == PARTS[name]
    assert "objective_model" in models  # every example's objective is quadratic
    got, want = rows.second(z, lam), ref.second(z, lam)
    zero = torch.zeros(b, n, n, dtype=D)  # None: no curvature
    for a, w in zip(got, want, strict=True):
        a, w = (zero if a is None else a), (zero if w is None else w)
        torch.testing.assert_close(a.expand_as(w), w, rtol=1e-10, atol=1e-10)
    g, H = models["objective_model"](P).grad_hess(z)
    g0, H0 = AutogradObjective(prog.f, P).grad_hess(z)
    torch.testing.assert_close(g, g0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(zero if H is None else H, zero if H0 is None else H0,
                               rtol=1e-10, atol=1e-10)


def test_cone_of_user_variables_from_the_apex_solves():
    # z = 0 puts norm2(x) <= t at its apex: phase I runs on norm2(x) - t, whose autograd
    # Hessian is NaN there (NormRows keeps it finite); it was reported INFEASIBLE before.
    # min ‖x - c‖² + t s.t. ‖x‖ <= t <= 2: x = c (1 - 1 / (2‖c‖))₊, t = ‖x‖ (t <= 2 inactive
    # for ‖c‖ <= 2.5)
    layer = ol.compile("dim n = 3\nparam c[n]\nvar x[n]\nvar t\n"
                       "minimize sum_squares(x - c) + t\nsubject to\n    norm2(x) <= t\n"
                       "    t <= 2")
    c = torch.tensor([[1.0, 2.0, -0.5], [0.3, -0.4, 1.2]], dtype=D)
    x, t = layer(c=c)
    nc = c.norm(dim=-1, keepdim=True)
    ref = c * (1 - 1 / (2 * nc)).clamp_min(0)
    assert layer.info.status.tolist() == [0, 0]
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-8)
    torch.testing.assert_close(t, ref.norm(dim=-1), rtol=0, atol=1e-8)


def test_multipliers_start_on_the_objectives_scale():
    # min cᵀx s.t. ‖x‖² <= 1 from x = 0 (g = -1): 1/s gives λ = 1; the rule asks
    # λ >= CONVEX_DUAL_START ‖∇f‖ / ‖∇g‖, and ∇g = 2x = 0 at x = 0 (a row that does not
    # move there keeps 1/s); at x = (0.5, 0): ‖∇g‖ = 1, ‖c‖ = 50 -> λ = 0.3 * 50 = 15
    from optlayer import defaults

    ip = ConvexInteriorPoint(lambda x, c: (c * x).sum(-1),
                             lambda x, r: (x ** 2).sum(-1, keepdim=True) - r)
    c = torch.tensor([[30.0, 40.0], [0.3, 0.4]], dtype=D)
    rows, obj = AutogradRows(ip.ineq_fun, 1.0), AutogradObjective(ip.fun, c)
    _, _, lam = ip._split_init(torch.zeros(2, 2, dtype=D), None, rows, obj)
    assert lam.tolist() == [[1.0], [1.0]]
    x = torch.tensor([[0.5, 0.0], [0.5, 0.0]], dtype=D)
    _, _, lam = ip._split_init(x, None, rows, obj)
    want = max(1 / 0.75, defaults.CONVEX_DUAL_START * 50.0)
    torch.testing.assert_close(lam, torch.tensor([[want], [1 / 0.75]], dtype=D))


def test_robust_ls_item_whose_first_step_crossed_its_row_no_longer_crawls(monkeypatch):
    # robust_ls at the benchmark's data (batch 32, seed 0): one item's optimal multiplier
    # (12.3) is ten times the 1/s start; its first step crossed the quadratic row far
    # outside, its slack collapsed and steps of 0.1-0.25 followed: 19 main iterations
    # (the median item 10). Started on the objective's scale it takes at most 14.
    # (robust_ls goes to Newton on its row's multiplier: the interior point is forced.)
    from optlayer.compiler import canon

    monkeypatch.setattr(canon, "one_quadratic_row", lambda program: False)
    layer = ol.load(EXAMPLES / "robust_ls.opt")
    out = layer(**random_params(layer.problem, batch=32, seed=0))
    assert layer.info.status.tolist() == [0] * 32
    assert layer.info.iterations <= 14
    assert torch.isfinite(out).all()


def test_maxls_must_be_positive():
    with pytest.raises(ValueError, match="maxls"):
        ConvexInteriorPoint(lambda x: x.sum(-1), maxls=0)
