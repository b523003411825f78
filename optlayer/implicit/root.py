"""custom_root, custom_fixed_point, root_vjp, root_jvp: implicit differentiation of roots.

JAXopt semantics for PyTorch. Given an optimality map ``F`` with
``F(x*(θ), θ) = 0``, the implicit function theorem gives
``∂x*(θ) = -[∂₁F(x*, θ)]⁻¹ ∂₂F(x*, θ)`` (Blondel et al., 2021, eq. 2), so a
solver's output can be differentiated from ``F`` alone, without unrolling the
solver.

* ``@custom_root(F)`` decorates ``solver(init, *args, **kwargs) -> x*``; the
  decorated solver runs the original one without building a graph (its inputs
  detached, under ``torch.no_grad``) and returns ``x*`` carrying implicit
  derivatives with respect to every floating-point tensor in ``args`` and
  ``kwargs`` (tensors, or tuples/lists/dicts of tensors; other values such as
  floats, ints, ``None`` or callables pass through undifferentiated).
  ``x*`` may be a tensor or a tuple/list/dict of tensors (e.g. KKT primal and
  dual variables) and ``F(x, *args, **kwargs)`` must return the same structure.
* It composes with ``loss.backward()``, ``torch.autograd.grad``, forward-mode
  AD, and ``torch.func.grad / vjp / jvp / jacrev / jacfwd / vmap``, and with
  second-order differentiation where F is twice differentiable.
* ``custom_fixed_point(T)`` is ``custom_root`` of ``F(x) = T(x) - x``.
* ``root_vjp`` / ``root_jvp`` are the underlying products, for a solution
  already at hand.

The decorated solver itself runs under whatever transform is active (it must
be vmappable to be used under ``vmap``/``jacrev`` with batched arguments, as in
JAXopt); implicit differentiation only ever calls F.
"""

from __future__ import annotations

import functools
import warnings

import torch

from optlayer.errors import OptTypeError
from optlayer.implicit._function import ImplicitRoot, jvp_core, make_spec, vjp_core
from optlayer.linalg._common import functorch_active
from optlayer.tree import flatten, tree_map, unflatten

__all__ = ["custom_root", "custom_fixed_point", "root_vjp", "root_jvp"]


def _need_callable(obj, name: str, what: str) -> None:
    if not callable(obj):
        raise OptTypeError(
            f"{what}: {name} must be callable; got {type(obj).__name__}",
            hint=f"pass a function, e.g. {what}(lambda x, theta: ...)"
            if name != "solve" else "pass a solver of optlayer.linalg, e.g. solve_cg",
        )


def _detach(tree):
    return tree_map(lambda a: a.detach() if isinstance(a, torch.Tensor) else a, tree)


def _attach(fun, solve, sol, args, kwargs, what, checked: set | None = None):
    """Return ``sol`` re-entered into autograd through :class:`ImplicitRoot`.

    F is checked against the solution eagerly, so a mismatch is reported here
    (where the user called the solver) rather than inside a backward pass; the
    check costs one evaluation of F and runs once per distinct signature
    (structure and shapes) when ``checked`` is given.
    """
    spec, sol_leaves, arg_tensors = make_spec(fun, solve, sol, args, kwargs, what)
    key = (
        spec.sol_def, spec.sol_shapes, spec.arg_def,
        tuple((tuple(a.shape), a.dtype) for a in arg_tensors),
    )
    if checked is None or key not in checked:
        x_d = spec.pack([s.detach() for s in sol_leaves])
        a_d = [a.detach() for a in arg_tensors]
        if functorch_active():
            with torch.no_grad():  # shape/structure check only
                spec.F(x_d, a_d)
        else:
            # Also look for tensors F captures that require grad (an nn.Parameter used
            # in F but not passed to the solver): they would get no gradient.
            with torch.enable_grad():
                res = spec.F(x_d, a_d)
            foreign = _foreign_leaves(res, [x_d, *a_d])
            if foreign:
                shapes = ", ".join(str(tuple(t.shape)) for t in foreign[:3])
                warnings.warn(
                    f"{what}: the optimality function uses {len(foreign)} tensor(s) that "
                    f"require grad but are not arguments of the solver (shapes {shapes}); "
                    "they receive no gradient from the implicit layer. Pass them to the "
                    "decorated solver as arguments (F receives the same arguments), or "
                    ".detach() them if they are constants.",
                    UserWarning,
                    stacklevel=4,
                )
        if checked is not None:
            checked.add(key)
    outs = ImplicitRoot.apply(spec, *[s.detach() for s in sol_leaves], *arg_tensors)
    return spec.sol_tree(outs)



def _foreign_leaves(out: torch.Tensor, inputs) -> list:
    """Leaf tensors requiring grad that ``out`` depends on and that share storage with
    none of ``inputs`` (``x.detach().requires_grad_()`` inside F shares its input's)."""
    if out.grad_fn is None:
        return []
    own = {t.untyped_storage().data_ptr() for t in inputs}
    found, seen, stack = [], set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        var = getattr(fn, "variable", None)
        if isinstance(var, torch.Tensor) and var.untyped_storage().data_ptr() not in own:
            found.append(var)
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return found


def _wrap(solver, fun, solve, has_aux, what):
    _need_callable(solver, "the decorated solver", what)
    checked: set = set()

    @functools.wraps(solver)
    def wrapped(init, *args, **kwargs):
        with torch.no_grad():
            out = solver(_detach(init), *_detach(args), **_detach(kwargs))
        if has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise OptTypeError(
                    f"{what}: has_aux=True, so the solver must return (solution, aux); "
                    f"got {type(out).__name__}"
                )
            sol, aux = out
            return _attach(fun, solve, sol, args, kwargs, what, checked), aux
        return _attach(fun, solve, out, args, kwargs, what, checked)

    return wrapped


def custom_root(optimality_fun, *, solve=None, has_aux=False):
    """Decorator adding implicit differentiation to a root-finding or optimization solver.

    Args:
        optimality_fun: ``F(x, *args, **kwargs)``, zero at the solution; it
            returns the structure of ``x`` (a tensor, or one tensor per solution
            tensor with the same shapes). It must be written in differentiable
            torch code (and twice differentiable for second-order derivatives).
        solve: linear solver ``solve(matvec, b) -> x`` (any of
            :mod:`optlayer.linalg`, or ``functools.partial`` of one). Default:
            dense LU of the materialised ``∂₁F`` up to
            ``defaults.IMPLICIT_DENSE_MAX`` (2000) unknowns, restarted GMRES above.
        has_aux: the solver returns ``(solution, aux)``; ``aux`` is returned
            as computed, without derivatives.

    Returns:
        A decorator turning ``solver(init, *args, **kwargs)`` into a function with
        the same signature whose output is differentiable in ``args`` and ``kwargs``
        by ``∂x* = -[∂₁F]⁻¹ ∂₂F``.

    Raises:
        OptTypeError: ``optimality_fun``, ``solve`` or the solver is not
            callable; the solver returns something other than floating tensors;
            F's output does not match the solution (at the call).

    Warns:
        OptimizationWarning: (during differentiation) the linear system with
            ``∂₁F`` could not be solved accurately, e.g. ``∂₁F`` is singular.

    Example:
        >>> import torch
        >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
        >>> y = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
        >>> def f(x, theta):  # ridge objective
        ...     return 0.5 * ((X @ x - y) ** 2).sum() + 0.5 * theta * (x ** 2).sum()
        >>> @custom_root(torch.func.grad(f))
        ... def ridge(init, theta):
        ...     return torch.linalg.solve(X.T @ X + theta * torch.eye(2, dtype=X.dtype), X.T @ y)
        >>> theta = torch.tensor(10.0, dtype=torch.float64)
        >>> J = torch.func.jacrev(ridge, argnums=1)(None, theta)
        >>> M = X.T @ X + theta * torch.eye(2, dtype=X.dtype)
        >>> bool(torch.allclose(J, -torch.linalg.solve(M, ridge(None, theta))))
        True
    """
    what = "custom_root"
    _need_callable(optimality_fun, "optimality_fun", what)
    if solve is not None:
        _need_callable(solve, "solve", what)

    def decorator(solver):
        return _wrap(solver, optimality_fun, solve, has_aux, what)

    return decorator


def _fixed_point_residual(fixed_point_fun):
    @functools.wraps(fixed_point_fun)
    def F(x, *args, **kwargs):
        tx = fixed_point_fun(x, *args, **kwargs)
        lx, tdx = flatten(x)
        lt, tdt = flatten(tx)
        shapes_x = [tuple(a.shape) for a in lx]
        shapes_t = [tuple(a.shape) if isinstance(a, torch.Tensor) else None for a in lt]
        if shapes_x != shapes_t:
            raise OptTypeError(
                f"custom_fixed_point: the fixed-point map must return the structure of x; "
                f"x is {tdx!r} with shapes {shapes_x}, T(x) returned {tdt!r} with shapes "
                f"{shapes_t}",
                hint="T(x, *args) is the next iterate of the solver, shaped like x",
            )
        return unflatten(tdx, [t - a for t, a in zip(lt, lx, strict=True)])

    return F


def custom_fixed_point(fixed_point_fun, *, solve=None, has_aux=False):
    """Decorator adding implicit differentiation to a solver of ``x = T(x, *args)``.

    Exactly :func:`custom_root` applied to ``F(x, ...) = T(x, ...) - x``, so
    ``∂x* = [I - ∂₁T]⁻¹ ∂₂T``. Arguments, returns and errors as
    :func:`custom_root` (with ``fixed_point_fun`` = T in place of F).

    Example:
        >>> import torch
        >>> A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> def T(x, b):  # gradient step on 0.5 x'Ax - b'x
        ...     return x - 0.2 * (A @ x - b)
        >>> @custom_fixed_point(T)
        ... def solver(init, b):
        ...     x = init
        ...     for _ in range(200):
        ...         x = T(x, b)
        ...     return x
        >>> b = torch.tensor([1.0, 1.0], dtype=torch.float64)
        >>> J = torch.func.jacrev(solver, argnums=1)(torch.zeros(2, dtype=torch.float64), b)
        >>> bool(torch.allclose(J, torch.linalg.inv(A)))
        True
    """
    what = "custom_fixed_point"
    _need_callable(fixed_point_fun, "fixed_point_fun", what)
    if solve is not None:
        _need_callable(solve, "solve", what)
    F = _fixed_point_residual(fixed_point_fun)

    def decorator(solver):
        return _wrap(solver, F, solve, has_aux, what)

    return decorator


def _as_tuple(args, name: str, what: str) -> tuple:
    if not isinstance(args, (tuple, list)):
        raise OptTypeError(
            f"{what}: {name} must be a tuple of the arguments of F after the solution "
            f"(e.g. (theta,)); got {type(args).__name__}"
        )
    return tuple(args)


def root_vjp(optimality_fun, sol, args, cotangent, *, solve=None):
    """Vector-Jacobian product ``vᵀ ∂x*(θ)`` of a root ``x*`` of ``F(·, *args) = 0``.

    Solves ``∂₁F(x*, θ)ᵀ u = v`` and returns ``-uᵀ ∂₂F(x*, θ)``.

    Args:
        optimality_fun: ``F(x, *args)``.
        sol: the root ``x*`` (tensor or pytree of tensors).
        args: tuple of the other arguments of F (tensors, pytrees, or non-tensors).
        cotangent: ``v``, shaped like ``sol``.
        solve: linear solver (default as in :func:`custom_root`).

    Returns:
        A tuple with one entry per element of ``args``, shaped like it: the
        VJP at floating-point tensor leaves, ``None`` at other leaves.

    Example:
        >>> import torch
        >>> F = lambda x, b: 2.0 * x - b  # x*(b) = b / 2
        >>> root_vjp(F, torch.ones(2), (torch.ones(2),), torch.tensor([1.0, 4.0]))
        (tensor([0.5000, 2.0000]),)
    """
    what = "root_vjp"
    _need_callable(optimality_fun, "optimality_fun", what)
    args = _as_tuple(args, "args", what)
    spec, sol_leaves, arg_tensors = make_spec(optimality_fun, solve, sol, args, {}, what)
    cot_leaves, _ = flatten(cotangent)
    shapes = [tuple(c.shape) if isinstance(c, torch.Tensor) else None for c in cot_leaves]
    if tuple(shapes) != spec.sol_shapes:
        raise OptTypeError(
            f"{what}: the cotangent must be shaped like the solution {list(spec.sol_shapes)}; "
            f"got {shapes}"
        )
    grads = vjp_core(spec, sol_leaves, arg_tensors, cot_leaves)
    leaves = [None] * len(spec.arg_template)
    for pos, g in zip(spec.tensor_pos, grads, strict=True):
        leaves[pos] = g
    out_args, _ = unflatten(spec.arg_def, leaves)
    return tuple(out_args)


def root_jvp(optimality_fun, sol, args, tangents, *, solve=None):
    """Jacobian-vector product ``∂x*(θ) · t`` of a root ``x*`` of ``F(·, *args) = 0``.

    Solves ``∂₁F(x*, θ) w = -∂₂F(x*, θ) t`` and returns ``w``.

    Args:
        optimality_fun: ``F(x, *args)``.
        sol: the root ``x*`` (tensor or pytree of tensors).
        args: tuple of the other arguments of F.
        tangents: tuple shaped like ``args``: a tangent tensor for each tensor
            leaf (``None`` means zero; non-tensor leaves are ignored).
        solve: linear solver (default as in :func:`custom_root`).

    Returns:
        The tangent of the solution, shaped like ``sol``.

    Example:
        >>> import torch
        >>> F = lambda x, b: 2.0 * x - b  # x*(b) = b / 2
        >>> root_jvp(F, torch.ones(2), (torch.ones(2),), (torch.tensor([1.0, 4.0]),))
        tensor([0.5000, 2.0000])
    """
    what = "root_jvp"
    _need_callable(optimality_fun, "optimality_fun", what)
    args = _as_tuple(args, "args", what)
    tangents = _as_tuple(tangents, "tangents", what)
    if len(tangents) != len(args):
        raise OptTypeError(
            f"{what}: tangents must have one entry per element of args ({len(args)}); "
            f"got {len(tangents)}"
        )
    spec, sol_leaves, arg_tensors = make_spec(optimality_fun, solve, sol, args, {}, what)
    t_leaves = []
    for a, t in zip(args, tangents, strict=True):
        la, _ = flatten(a)
        lt, _ = flatten(t) if t is not None else ([None] * len(la), None)
        if len(lt) != len(la):
            raise OptTypeError(f"{what}: a tangent does not match the structure of its argument")
        t_leaves.extend(lt)
    arg_tangents = [t_leaves[pos] for pos in spec.tensor_pos]
    for a, t in zip(arg_tensors, arg_tangents, strict=True):
        if t is not None and (not isinstance(t, torch.Tensor) or t.shape != a.shape):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise OptTypeError(
                f"{what}: a tangent must be shaped like its argument {tuple(a.shape)}; got {got}"
            )
    return spec.sol_tree(jvp_core(spec, sol_leaves, arg_tensors, arg_tangents))
