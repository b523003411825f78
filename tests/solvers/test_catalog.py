"""Every solver of the catalog on its problem class: solution vs a closed form or
cvxpy, batched equal to a loop, float32 vs float64, implicit vs unrolled gradients,
and gradcheck of the implicit gradient at float64."""

import functools

import pytest
import torch

from ._cases import CASES

IDS = list(CASES)
TIGHT = 1e-12


@functools.cache
def _reference(name):
    case = CASES[name]
    _, args = case.data(torch.float64)
    return case.reference(args)


@pytest.mark.parametrize("name", IDS, ids=IDS)
def test_solution_matches_reference_and_is_optimal(name):
    case = CASES[name]
    init, args = case.data(torch.float64)
    out = case.make(tol=TIGHT, maxiter=None).run(init, *args)
    assert out.state.status.dtype == torch.int8
    assert out.state.status.tolist() == [0, 0, 0]
    assert bool((out.state.error <= TIGHT).all())
    torch.testing.assert_close(case.primal(out.params), _reference(name), rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", IDS, ids=IDS)
def test_batched_equals_loop(name):
    case = CASES[name]
    init, args = case.data(torch.float64)
    solver = case.make()
    batched = case.primal(solver.run(init, *args).params)

    def item(a, i):
        if isinstance(a, tuple):
            return tuple(item(t, i) for t in a)
        if isinstance(a, torch.Tensor) and a.ndim > 0 and a.shape[0] == init.shape[0]:
            return a[i : i + 1]
        return a

    for i in range(init.shape[0]):
        one = case.primal(solver.run(init[i : i + 1], *[item(a, i) for a in args]).params)
        torch.testing.assert_close(one[0], batched[i], rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", IDS, ids=IDS)
def test_float32_within_1e4_of_float64(name):
    case = CASES[name]
    init, args = case.data(torch.float32)
    out = case.make(maxiter=None).run(init, *args)
    x = case.primal(out.params)
    assert x.dtype == torch.float32
    assert out.state.status.tolist() == [0, 0, 0]
    torch.testing.assert_close(x.double(), _reference(name), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", IDS, ids=IDS)
def test_inference_mode_gives_the_no_grad_solution(name):
    """Under torch.inference_mode (evaluation code) the solvers, which take gradients of
    ``fun`` by autograd, run on ordinary copies of their inputs: same solution."""
    case = CASES[name]
    init, args = case.data(torch.float64)
    with torch.no_grad():
        ref = case.make().run(init, *args)
    with torch.inference_mode():
        out = case.make().run(init, *args)
    assert out.state.status.tolist() == [0, 0, 0]
    torch.testing.assert_close(case.primal(out.params), case.primal(ref.params), rtol=0,
                               atol=1e-12)


def _with_grad(args, k):
    args = list(args)
    args[k] = args[k].clone().requires_grad_(True)
    return args


@pytest.mark.parametrize("name", IDS, ids=IDS)
def test_implicit_and_unrolled_gradients_agree_at_convergence(name):
    case = CASES[name]
    init, args = case.data(torch.float64)
    k = case.diff_arg
    w = torch.linspace(-1, 1, init.numel(), dtype=torch.float64).reshape(init.shape)
    grads = []
    for implicit in (True, False):
        a = _with_grad(args, k)
        x = case.primal(case.make(tol=TIGHT, maxiter=None, implicit_diff=implicit).run(
            init, *a).params)
        grads.append(torch.autograd.grad((w * x).sum() + (x**2).sum(), a[k])[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", IDS, ids=IDS)
def test_gradcheck_implicit(name):
    case = CASES[name]
    init, args = case.data(torch.float64)
    k = case.diff_arg
    solver = case.make(tol=TIGHT, maxiter=None)

    def fn(t):
        a = list(args)
        a[k] = t
        return case.primal(solver.run(init, *a).params)

    t = args[k].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (t,), eps=1e-5, atol=1e-6, fast_mode=True)
