"""An optimality map written with the plain-autograd idiom works with plain autograd.

``F = ∇ₓf`` written as ``torch.autograd.grad(f(x), x, create_graph=True)`` on
``x.detach().requires_grad_()`` captures no tensor, so custom_root must accept
it (REVIEW finding 9: the closure check flagged it) and ``loss.backward()`` /
``gradcheck`` must give the implicit derivative. (Under torch.func transforms
F itself must be torch.func code: torch forbids ``requires_grad_()`` inside a
transformed function, so ``torch.func.grad(f)`` is the idiom there.)

f = 1.5‖x‖² + ¼Σx⁴ − tᵀx, so F = 3x + x³ − t and ∂x*/∂t = diag(1 / (3 + 3x*²)).
"""

import torch

import optlayer as ol

DT = torch.float64


def f(x, t):
    return 1.5 * (x**2).sum() + 0.25 * (x**4).sum() - (t * x).sum()


def F_autograd(x, t):
    with torch.enable_grad():
        xx = x if x.requires_grad else x.detach().requires_grad_()
        return torch.autograd.grad(f(xx, t), xx, create_graph=True)[0]


def newton(t):
    x = torch.zeros_like(t)
    for _ in range(50):
        x = x - (3 * x + x**3 - t) / (3 + 3 * x**2)
    return x


T0 = torch.tensor([0.5, 2.0, -1.0], dtype=DT)
WANT = torch.diag(1.0 / (3.0 + 3.0 * newton(T0) ** 2))


def _solver():
    return ol.custom_root(F_autograd)(lambda init, t: newton(t))


def test_autograd_idiom_backward():
    t = T0.clone().requires_grad_()
    _solver()(None, t).sum().backward()
    torch.testing.assert_close(t.grad, WANT.sum(0), rtol=0, atol=1e-12)


def test_autograd_idiom_gradcheck():
    t = T0.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: _solver()(None, t), (t,))


def test_torch_func_grad_idiom_jacrev():
    solver = ol.custom_root(torch.func.grad(f))(lambda init, t: newton(t))
    J = torch.func.jacrev(solver, argnums=1)(None, T0)
    torch.testing.assert_close(J, WANT, rtol=0, atol=1e-12)
