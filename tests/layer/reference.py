"""A cvxpy reference built from the IR (test helper): solves a bound problem on numpy data."""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from optlayer.ir import Apply, Constant, Let, Membership, Parameter, Variable, postorder


def _atom(name, a, static):
    if name == "add":
        return a[0] + a[1]
    if name == "sub":
        return a[0] - a[1]
    if name == "negate":
        return -a[0]
    if name in ("mul",):
        return cp.multiply(a[0], a[1])
    if name == "div":
        return a[0] / a[1]
    if name in ("matmul", "dot"):
        return a[0] @ a[1]
    if name == "power":
        return cp.power(a[0], static[0])
    if name == "transpose":
        return a[0].T
    if name == "index":
        return a[0][static]
    table = {"sum": cp.sum, "sum_squares": cp.sum_squares, "square": cp.square, "abs": cp.abs,
             "norm1": lambda x: cp.norm(x, 1), "norm2": lambda x: cp.norm(cp.vec(x, order="C"), 2),
             "norm_inf": lambda x: cp.norm(x, "inf"), "exp": cp.exp, "log": cp.log,
             "sqrt": cp.sqrt, "logsumexp": cp.log_sum_exp, "entropy": lambda x: cp.sum(cp.entr(x)),
             "kl_div": lambda x, y: cp.sum(cp.kl_div(x, y)), "huber": cp.huber,
             "logistic": cp.logistic, "softplus": cp.logistic, "pos": cp.pos, "neg": cp.neg,
             "quad_form": lambda x, P: cp.quad_form(x, cp.psd_wrap(P)), "trace": cp.trace,
             "mean": cp.sum, "diag": cp.diag}
    if name == "mean":
        return cp.sum(a[0]) / a[0].size
    if name in ("max", "min"):  # max(x) reduces, max(a, b) is elementwise
        if len(a) == 1:
            return (cp.max if name == "max" else cp.min)(a[0])
        return (cp.maximum if name == "max" else cp.minimum)(a[0], a[1])
    return table[name](*a)


def _set(kind, x, args):
    if kind == "nonneg":
        return [x >= 0]
    if kind == "simplex":
        return [x >= 0, cp.sum(x) == (args[0] if args else 1)]
    if kind == "box":
        return [x >= args[0], x <= args[1]]
    if kind == "ball1":
        return [cp.norm(x, 1) <= args[0]]
    if kind == "ball2":
        return [cp.norm(x, 2) <= args[0]]
    if kind == "ballinf":
        return [cp.norm(x, "inf") <= args[0]]
    if kind == "psd":
        return [x >> 0]
    if kind == "soc":
        return [cp.SOC(x[0], x[1:])]
    raise KeyError(kind)


def _build(problem, leaf, labels=None):
    vars_ = {n: cp.Variable(tuple(int(d) for d in v.shape), name=n,
                            symmetric="psd" in v.attrs or "symmetric" in v.attrs)
             for n, v in problem.vars.items()}
    memo = {}

    def conv(root):
        for node in postorder(root):
            if id(node) in memo:
                continue
            if isinstance(node, Variable):
                memo[id(node)] = vars_[node.name]
            elif isinstance(node, Parameter):
                memo[id(node)] = leaf(node)
            elif isinstance(node, Constant):
                v = node.value
                memo[id(node)] = np.asarray(v, dtype=float) if hasattr(v, "shape") else float(v)
            elif isinstance(node, Let):
                memo[id(node)] = memo[id(node.args[0])]
            elif isinstance(node, Apply):
                memo[id(node)] = _atom(node.atom.name, [memo[id(c)] for c in node.args],
                                       node.static)
        return memo[id(root)]

    obj = conv(problem.objective.expr)
    obj = cp.Minimize(obj) if problem.objective.sense == "minimize" else cp.Maximize(obj)
    cons = []
    for c in list(problem.constraints) + list(problem.attribute_constraints()):
        if isinstance(c, Membership):
            cons += _set(c.set.kind.name, conv(c.expr), [conv(a) for a in c.set.args])
        else:
            lhs, rhs = conv(c.lhs), conv(c.rhs)
            cons.append({"==": lhs == rhs, "<=": lhs <= rhs, ">=": lhs >= rhs}[c.op])
            if labels is not None and c.label:
                labels[c.label] = cons[-1]
    return cp.Problem(obj, cons), vars_


def solve_reference(problem, values: dict):
    """Solve ``problem`` (bound) with cvxpy at numpy ``values``.

    Returns:
        ``({name: array}, optimal value)``.
    """
    prob, vars_ = _build(problem, lambda node: np.asarray(values[node.name], dtype=float))
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    assert prob.status in ("optimal", "optimal_inaccurate"), prob.status
    return {n: v.value for n, v in vars_.items()}, float(prob.value)


def solve_reference_duals(problem, values: dict):
    """Like :func:`solve_reference`, plus ``{label: dual}`` of labelled ``<=, >=, ==``
    constraints (cvxpy's sign: inequality duals >= 0)."""
    labels: dict = {}
    prob, vars_ = _build(problem, lambda node: np.asarray(values[node.name], dtype=float), labels)
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    assert prob.status in ("optimal", "optimal_inaccurate"), prob.status
    duals = {k: np.atleast_1d(np.asarray(c.dual_value, dtype=float)) for k, c in labels.items()}
    return {n: v.value for n, v in vars_.items()}, float(prob.value), duals


def build_cvxpy(problem):
    """The problem with ``cp.Parameter`` leaves (for cvxpylayers): ``(prob, params, vars)``."""
    params = {}

    def leaf(node):
        if node.name not in params:
            kw = {}
            if "pos" in node.attrs:
                kw["pos"] = True
            elif "nonneg" in node.attrs:
                kw["nonneg"] = True
            if "psd" in node.attrs:
                kw["PSD"] = True
            elif "symmetric" in node.attrs:
                kw["symmetric"] = True
            params[node.name] = cp.Parameter(tuple(int(d) for d in node.shape), name=node.name,
                                             **kw)
        return params[node.name]

    prob, vars_ = _build(problem, leaf)
    return prob, [params[n] for n in problem.params if n in params], list(vars_.values())


def reference_objective(problem, values: dict, solution) -> float:
    """The problem's objective (as stated, minimize or maximize) at a layer solution."""
    import torch

    sol = [solution] if isinstance(solution, torch.Tensor) else list(solution)
    env = dict(values)
    env.update(dict(zip(problem.vars, sol, strict=True)))
    return float(problem.objective.expr.evaluate(env))
