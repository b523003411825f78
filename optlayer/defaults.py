"""Default numerical settings, in one place.

Every solver and linear solver reads its default ``tol`` and ``maxiter`` from
here so that the catalog shares one vocabulary and one set of defaults.
"""

from __future__ import annotations

import torch

__all__ = [
    "tol",
    "eps",
    "ipm_infeasibility_tol",
    "ipm_inaccurate_tol",
    "MAXITER",
    "LINEAR_ITERS_PER_DIM",
    "GMRES_RESTART",
    "IMPLICIT_DENSE_MAX",
    "PHASE_ONE_MAXITER_FACTOR",
    "DSL_MAX_SOURCE_CHARS",
    "DSL_MAX_DEPTH",
    "IPM_REG_FACTOR",
    "QP_SCALE_ABOVE",
    "IPM_REFINE_STEPS",
    "IPM_BACKWARD_REFINE_STEPS",
    "IPM_POLISH_REFINE_STEPS",
    "IPM_REFINE_BELOW",
    "IPM_COMPACT_MIN_BATCH",
    "IPM_ARROW_MIN_SIZE",
    "IPM_ARROW_MIN_SHARE",
    "IPM_ARROW_ROUNDS",
    "IPM_DENSE_MAX_SIZE",
    "IPM_DENSE_MAX_WORK",
    "IPM_DENSE_EQ_SHARE",
    "IPM_LU_MAX_WORK",
    "LU_BATCHED_MAX_SIZE",
    "ACTIVE_SET_MAX_ROWS",
    "ACTIVE_SET_MAX_WORK",
    "ACTIVE_SET_PDAS_ITERS",
    "IPM_RESCUE_MAX_SIZE",
    "IPM_ELIMINATE_EQUALITIES",
    "IPM_DIVERGED",
    "IPM_STALL_ITERS",
    "IPM_FAST_LOOP",
    "IPM_POLISH_BELOW",
    "IPM_POLISH_CORRECTIONS",
    "IPM_POLISH_AT",
    "IPM_REG_BOOST",
    "IPM_REG_RETRIES",
    "NEWTON_MAX_SIZE",
    "QUADRATIC_MAX_SIZE",
    "SETS_AS_QP_MAX_SIZE",
    "OBJECTIVE_MODEL_MAX_ELEMENTS",
    "READOFF_MAX_ELEMENTS",
    "READOFF_COEFFICIENTS",
    "PARAM_AFFINE_MAX_ENTRIES",
    "FP_NEWTON_START",
    "FP_NEWTON_EVERY",
    "FP_NEWTON_MAX_SIZE",
    "IMPLICIT_LOOP_MAX",
    "FBN_STEP_FRACTION",
    "FBN_MAXLS",
    "FBN_UNBOUNDED_CHECK",
    "CONVEX_KKT_MAXLS",
    "CONVEX_DUAL_START",
    "CONVEX_POLISH_BELOW",
    "CONVEX_POLISH_NEWTON",
    "CONVEX_POLISH_SWITCH",
    "CONVEX_POLISH_MAX_SIZE",
    "DOMAIN_START_WEIGHT",
    "MD_STEP_MAX",
    "FBN_LS_BATCH",
    "FP_NEWTON_DECREASE",
    "NORMAL_NEWTON_MAXITER",
    "NORMAL_NEWTON_MAXLS",
    "NORMAL_NEWTON_STEP",
    "IPM_STEP_LADDER",
    "IPM_GAP_GROWTH",
    "MATVEC_TRANSPOSED_MIN",
]

_TOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 1e-2,
    torch.bfloat16: 1e-2,
}

#: Default iteration caps by solver family.
MAXITER = {
    "linear": 1000,          # Krylov linear solvers (capped at a multiple of n)
    "first_order": 5000,     # FISTA, projected gradient, mirror descent
    "quasi_newton": 500,     # L-BFGS, nonlinear CG
    "newton": 50,            # Newton, Gauss-Newton, Levenberg-Marquardt
    "interior_point": 50,    # QP / convex interior point
    "fixed_point": 1000,     # fixed point iteration, Anderson, Sinkhorn
}


def tol(dtype: torch.dtype) -> float:
    """Default convergence tolerance for ``dtype`` (float64: 1e-10, float32: 1e-5)."""
    try:
        return _TOL[dtype]
    except KeyError:
        raise TypeError(f"optlayer works with floating dtypes; got {dtype}") from None


def eps(dtype: torch.dtype) -> float:
    """Machine epsilon of ``dtype``."""
    return torch.finfo(dtype).eps


#: Linear solvers: default ``maxiter`` is ``min(MAXITER["linear"], LINEAR_ITERS_PER_DIM * n)``.
LINEAR_ITERS_PER_DIM = 10
#: Restart length of GMRES (Krylov vectors kept per cycle).
GMRES_RESTART = 30
#: custom_root's default backward solve is dense (materialise, LU) up to this
#: many unknowns, and matrix-free GMRES above it (see docs/implicit.md).
IMPLICIT_DENSE_MAX = 2000

#: ConvexInteriorPoint's phase I (finding a strictly feasible start, or proving
#: infeasibility) may run this many times the main iteration cap.
PHASE_ONE_MAXITER_FACTOR = 4

# .opt language limits (optlayer.dsl): inputs beyond them end in an OptSyntaxError
# instead of a RecursionError or a long hang.
#: Longest accepted source text, in characters.
DSL_MAX_SOURCE_CHARS = 100_000
#: Deepest accepted expression nesting (operators, calls, brackets' contents).
DSL_MAX_DEPTH = 1000

# --- interior point QP (optlayer.solvers.qp) -------------------------------

#: ``solve_qp`` divides an item's objective (``Q``, ``p``) by its largest coefficient where
#: that is above this, and multiplies the multipliers back (the solution is the same;
#: the reported residuals are the scaled problem's, relative as always). The interior
#: point's start, regularization and active-set thresholds are in absolute units:
#: portfolio with mu and F times 1e6 (|Q| ~ 1e12) ended MAX_ITER on every item, and nnls
#: with its data times 1e3 took 18 iterations instead of 3 (times 10: 3).
QP_SCALE_ABOVE = 1e4

#: Diagonal regularization of the reduced KKT factorization, in units of the
#: dtype's machine epsilon (relative to the diagonal, plus the same times the
#: data scale); removed again by iterative refinement.
IPM_REG_FACTOR = 1.0

#: Iterative refinement steps per KKT solve in the interior point iterations
#: (0: the iterations recompute residuals from the data, so they self-correct).
IPM_REFINE_STEPS = 0

#: Iterative refinement steps per KKT solve in the backward pass (and in the
#: active-set solve that the dense kernels' backward shares with their polish).
IPM_BACKWARD_REFINE_STEPS = 1

#: Iterative refinement steps in the reduced kernel's polish. None by default:
#: the polished point is accepted only where its recomputed KKT error is not
#: worse than the iterate's, and an item whose polished point misses ``tol``
#: resumes iterating (see IPM_POLISH_AT), so an inaccurate solve costs time,
#: never a wrong status. At n = 50 and 100, batch 128, the same items passed
#: with and without the step (KKT errors at most 5e-14 instead of 2e-14), and
#: the step cost about 2% of a forward and backward pass.
IPM_POLISH_REFINE_STEPS = 0

_IPM_INFEASIBILITY_TOL = {torch.float64: 1e-8, torch.float32: 1e-4}
_IPM_INACCURATE_TOL = {torch.float64: 1e-6, torch.float32: 1e-3}


def ipm_infeasibility_tol(dtype: torch.dtype) -> float:
    """Certificate tolerance: infeasible / unbounded means "no solution of norm < 1/tol"."""
    return _IPM_INFEASIBILITY_TOL.get(dtype, 1e-3)


def ipm_inaccurate_tol(dtype: torch.dtype) -> float:
    """Residual below which a stopped interior point iterate is OPTIMAL_INACCURATE."""
    return _IPM_INACCURATE_TOL.get(dtype, 1e-2)

#: Interior point iterations refine their KKT solves only once the worst
#: active residual is below this (early iterations need no refinement).
IPM_REFINE_BELOW = 1e-4

#: The interior point loop drops frozen items (and continues on the active
#: ones only) once at most half are active, for working batches this large.
IPM_COMPACT_MIN_BATCH = 8

#: The reduced interior point kernel factors ``Q + G'WG`` by its arrow structure
#: (``solvers._qp_arrow``: a diagonal block eliminated first, as epigraph variables give)
#: where the problem has at least IPM_ARROW_MIN_SIZE unknowns and the diagonal block at
#: least IPM_ARROW_MIN_SHARE of them; IPM_ARROW_ROUNDS bounds the rounds of its search.
#: solve_qp forward+backward on lad-shaped QPs (``rows`` residuals, ``d`` weights, ``n =
#: rows + d``), arrow against dense (the iterations' and the active-set factorizations),
#: CPU, one thread: n = 13 batch 128 1.05x, batch 512 0.96x; n = 23 batch 128 0.81x;
#: n = 45 batch 16 0.83x; n = 66 batch 8 0.80x, batch 128 0.54x; n = 165 batch 8 0.39x;
#: n = 330 batch 4 0.25x; n = 550 batch 2 0.19x; n = 1100 batch 2 0.11x (0.53 against
#: 4.6 s).
IPM_ARROW_MIN_SIZE = 20
IPM_ARROW_MIN_SHARE = 0.5
IPM_ARROW_ROUNDS = 8

#: Which interior point kernel solves a QP batch (``_qp_dense.kernel_for``),
#: with ``N = n + 2m + me`` rows in the full Newton system: up to
#: IPM_DENSE_MAX_SIZE rows and ``batch * N^2`` up to IPM_DENSE_MAX_WORK, the
#: loop on the full system (few tensor operations, which is what small
#: problems cost), its Newton direction by one LU of the full matrix while
#: ``batch * N^2`` is at most IPM_LU_MAX_WORK, else by the Cholesky
#: factorization of the reduced system; larger batches use the reduced kernel,
#: and with equality constraints (which the reduced kernel eliminates) already
#: above IPM_DENSE_EQ_SHARE * IPM_DENSE_MAX_WORK.
#: Crossovers measured on CPU, float64, one thread, fwd+bwd of the
#: examples/benchmarks/qp.py family (ms, full-lu / full-cholesky / reduced),
#: with its n/5 equalities: n=10 batch 1 6.7/8.6/12.8, batch 8 10.8/12.9/17.3,
#: batch 32 11.1/11.2/13.4, batch 64 19.9/16.9/15.4, batch 128 44.9/30.9/21.8;
#: n=20 batch 32 31.1/21.6/18.3; n=50 batch 1 11.3/11.6/19.1, batch 4
#: 21.8/16.2/13.7, batch 8 36.2/22.7/17.8; n=100 batch 1 (N=320) -/22.6/19.7;
#: without them: n=10 batch 64 15.6/11.6/15.0, batch 128 30.7/18.6/16.9; n=20
#: batch 32 25.3/17.4/16.1; n=50 batch 4 21.9/14.5/15.5, batch 8 33.9/20.7/17.9;
#: the kkt layers at batch 32 (examples/problems): lad_regression (N=53, no
#: equalities) 19.6/12.0/13.7, hinge_svm (N=54) 22.2/15.5/15.8, minimax_fit
#: 18.3/11.1/14.3, quantile_regression (N=44, 6 equalities) 16.7/14.3/13.9.
IPM_DENSE_MAX_SIZE = 200
IPM_DENSE_MAX_WORK = 1e5
IPM_DENSE_EQ_SHARE = 0.5
IPM_LU_MAX_WORK = 3e4

#: Batched LU factorisations (``linalg._common.lu_factor``) of CPU matrices larger than
#: this, with more than one torch thread, run one item at a time: torch 2.13's batched
#: ``lu_factor_ex`` / ``linalg.solve`` with MKL hang (or fail with "Parameter 6 was
#: incorrect on entry to DLASWP") from n = 151 at 2 threads on this project's CPUs;
#: one matrix at a time, or one thread, they are right. Above this size the
#: factorisation's flops, not the loop, set the time.
LU_BATCHED_MAX_SIZE = 128

#: Small batches of QPs are first solved by the active-set methods
#: (``_qp_active``: one LU of ``n + m + me`` rows per iteration, a few
#: iterations for the primal-dual rule, about one per row that ends active for
#: the dual method that finishes where the rule cycles) when there are at most
#: ACTIVE_SET_MAX_ROWS inequalities and ``batch * (n + m + me)^2`` is at most
#: ACTIVE_SET_MAX_WORK; the interior point takes the items they leave (and the
#: whole batch where no ``Q`` is positive definite: LPs, epigraph variables).
#: Crossovers measured on CPU, float64, one thread, fwd+bwd of the
#: examples/benchmarks/qp.py family (ms, active set / interior point): n=10
#: batch 1 1.20/2.67, batch 32 3.64/7.82, batch 64 7.49/12.5, batch 96
#: 9.98/11.7, batch 128 14.7/14.4; n=20 batch 32 10.5/13.3, batch 48
#: 15.5/17.3; n=30 batch 16 8.68/13.6; n=40 batch 16 16.0/13.6; n=50 batch 1
#: 2.31/6.23, batch 8 11.8/16.3; n=100 batch 1 5.67/10.4, batch 4 18.9/15.9;
#: n=150 batch 1 12.0/13.0; n=200 batch 1 25.8/16.8.
ACTIVE_SET_MAX_ROWS = 128
ACTIVE_SET_MAX_WORK = 6e4

#: The active-set methods start with at most this many primal-dual active-set
#: iterations (each working set: the rows of the last one with a nonnegative
#: multiplier, plus every violated row); the items whose set has not settled by
#: then (the rule can cycle) are finished by Goldfarb and Idnani's dual method
#: (``_qp_active``) or by the reduced interior point (``_qp_schur``). On the
#: examples/benchmarks/qp.py family (n = 10 to 100) 98% of the items or more
#: settle within 10 iterations; 0 turns the rule off.
ACTIVE_SET_PDAS_ITERS = 10

#: A batched matrix-vector product ``M @ v`` with ``M`` ``(B, r, c)`` runs as the
#: row-vector product ``v' @ M'`` on a kept contiguous transpose ``M'`` once
#: ``r * c`` is at least this (``_qp_ipm.matvec``): measured on CPU, float64, one
#: thread, it then takes 0.4-0.7x the time of ``M @ v`` (e.g. 191 vs 285 us at
#: (128, 90, 40), 20 vs 51 us at (32, 90, 40)); below about 400 entries it is
#: slower (1.2-1.7x at (32, 26, 14)).
MATVEC_TRANSPOSED_MIN = 400

#: Items the Cholesky-based kernels leave without a verdict (OPTIMAL,
#: INFEASIBLE or UNBOUNDED) are solved again on the full Newton system with LU
#: (in float64) when it has at most this many rows: as the duals of an
#: infeasible problem diverge, the reduced system loses the accuracy a
#: certificate needs, and in float32 it stalls on ill-conditioned items.
IPM_RESCUE_MAX_SIZE = 200

#: The reduced kernel eliminates equality constraints of full row rank before
#: its iterations (``x = x0 + Z u`` with ``Z`` a basis of the null space of
#: ``A``; :mod:`optlayer.solvers._qp_elim`), so that each iteration factors one
#: smaller Cholesky and no Schur complement. False keeps them in the iterations.
IPM_ELIMINATE_EQUALITIES = True

#: Where that rescue is available, the Cholesky-based kernels stop an item
#: (NUMERICAL_ERROR, then the rescue) whose KKT error has grown IPM_DIVERGED
#: times over its first one (infeasible problems whose certificate the reduced
#: system cannot resolve) or has not halved its best in IPM_STALL_ITERS
#: iterations (float32, where ``W = z / s`` nears ``1 / eps``).
IPM_DIVERGED = 1e6
IPM_STALL_ITERS = 5

#: Small QPs with inequality constraints and no equalities go first through an
#: interior point loop without safeguards (``_qp_fast``: about half the tensor
#: operations per iteration of the guarded loop; forward+backward of the kkt
#: examples 0.70-0.80x the time); the items it leaves not OPTIMAL (it stops where the worst
#: error has not halved in IPM_STALL_ITERS iterations) go through the guarded
#: kernel in the iterations left. False: the guarded kernel alone.
IPM_FAST_LOOP = True

#: The full-system interior point loop tries to finish by polishing on the active
#: set once every running item's error is below this (and again after each
#: further hundredfold decrease, if some active set has changed); an item stops
#: where its polished point passes the KKT check.
IPM_POLISH_BELOW = 1e-3

#: A polished point of the full-system loop that fails the KKT check gets up to this
#: many corrections of its active set (rows with a negative multiplier leave, the row
#: the point violates most joins; ``_qp_dense._correct``), each a polish on the new set
#: of the items still failing. 0: none.
IPM_POLISH_CORRECTIONS = 2

#: The large-problem interior point iterates down to this error (or ``tol`` if
#: larger) and then polishes on the active set; items whose polished point does
#: not pass ``tol`` resume iterating down to ``tol`` and are polished again.
IPM_POLISH_AT = 1e-8

#: When the reduced interior point's factorization of an item fails, the item
#: takes no step and retries with its absolute diagonal regularization
#: multiplied by IPM_REG_BOOST, at most IPM_REG_RETRIES times (then
#: NUMERICAL_ERROR). The residuals are always recomputed from the data, so a
#: larger regularization only changes the direction, not the answer.
IPM_REG_BOOST = 1e4
IPM_REG_RETRIES = 3

# compiler / OptLayer (optlayer.compiler, optlayer.layer)
#: Unconstrained smooth problems with at most this many unknowns use Newton; larger ones FISTA.
NEWTON_MAX_SIZE = 200

#: Dense quadratic data (Q, p) of a quadratic smooth part up to this many unknowns.
QUADRATIC_MAX_SIZE = 500
#: A quadratic objective whose variables lie in polyhedral simple sets (nonneg, box,
#: simplex) and nothing else is a QP: up to this many unknowns its default method is
#: ``kkt`` (the QP interior point), not ``proj_grad`` (forward-backward Newton, else
#: FISTA), which stays applicable. Forward + backward, batch 32 unless noted, one thread
#: (proj_grad / kkt, ms): svm_dual 6.3 / 2.9, portfolio 4.9 / 2.2, box_qp 3.0 / 2.1,
#: nnls 2.7 / 1.7; svm_dual N = 30 16 / 12, N = 70 76 / 43, N = 400 12000 (1500
#: iterations) / 1430; portfolio n = 100 123 / 60, n = 300 1520 (248 iterations) / 730,
#: n = 600 (batch 4) MAX_ITER on 2 of 4 items / all optimal; at n = 500 (batch 4) the
#: two are even: nnls 413 / 419, box_qp 372 / 415.
SETS_AS_QP_MAX_SIZE = 500
#: The closed-form objective model (compiler.smooth.objective_model) reads the pieces
#: that the coefficients (READOFF_COEFFICIENTS) do not cover off by evaluating them on
#: stacked copies of the parameters (one per affine output, or per unknown for the
#: quadratic terms); above this many parameter elements in all the copies (80 MB in
#: float64) the solvers keep autograd instead.
OBJECTIVE_MODEL_MAX_ELEMENTS = 10_000_000
#: Where the coefficients do not cover an expression (READOFF_COEFFICIENTS below), the
#: kkt paths read the QP data and affine rows off by evaluating the problem at
#: N + 1 points per item, on as many stacked copies of the parameters; one evaluation
#: holds at most this many parameter elements in its copies (8 MB in float64); more
#: points run in chunks (a single point uses the parameters themselves), each
#: checkpointed where the parameters need gradients (its copies are made again in the
#: backward instead of kept). (lad_regression, m = 1000, d = 100, batch 2: with one
#: evaluation of all 1101 points the layer's process peaked at 2.7 GB, now 1.2 GB;
#: chunks of 1e7 elements read off in 1.24 s, of 1e6 in 0.47 s, of 4e5 in 0.37 s.)
#: The same bound holds the convex path's read-off (compiler.smooth.taylor: a point per
#: row and unknown) and its autograd rows (N + r points per evaluation): robust_ls at
#: n = 200, m = 300, k = 20, batch 16 peaked at 3.8 GB, now 0.5 GB, its forward 1.7x
#: faster.
READOFF_MAX_ELEMENTS = 1_000_000
#: The kkt paths and the quadratic (Q, p) take the coefficients of affine rows and of
#: quadratic objectives from one pass over the IR (compiler.coefficients: each node's
#: Jacobian carried beside its value) where every atom involved has a tangent rule, instead
#: of evaluating at the N + 1 points above; False forces the points (as the tests of that
#: path do). lad_regression, batch 32: forward + backward 6.7-6.9 -> 6.1-6.2 ms.
READOFF_COEFFICIENTS = True

#: The QP data of a problem affine in its parameters are computed as one matrix product
#: ``m0 + vec(P) @ M`` (:mod:`optlayer.compiler.param_affine`) where ``M`` has at most
#: this many entries (``(parameter entries + 1) * data entries``; 8 MB in float64); above
#: it, and with 0, by the coefficients or the read-off as for any problem. At batch 32
#: the product took a forward and backward of lad_regression from 5.42 to 5.10 ms, of lp
#: from 3.90 to 3.48 ms (one process, medians).
PARAM_AFFINE_MAX_ENTRIES = 1_000_000

#: Fixed-point methods try Newton steps on T(z) - z after this many first-order iterations,
FP_NEWTON_START = 0
#: and again this many iterations after a trial some item rejected (doubled after a trial
#: no item kept; see FP_NEWTON_DECREASE),
FP_NEWTON_EVERY = 1
#: for problems with at most this many unknowns (dense N x N Jacobians).
FP_NEWTON_MAX_SIZE = 200
#: The layer's implicit backward materialises its per-item Jacobian block column by
#: column (N products, no vmap) up to this many unknowns.
IMPLICIT_LOOP_MAX = 64
#: Forward-backward Newton (quadratic f): step eta = this fraction of 1 / lambda_max(Q)
#: (below 1 keeps the envelope's metric I - eta Q positive definite).
FBN_STEP_FRACTION = 0.95
#: Backtracking trials (halving) along the Newton direction before the forward-backward
#: Newton iteration falls back to the proximal-gradient point.
FBN_MAXLS = 40
#: Forward-backward Newton tests the items that have not converged for a ray along which
#: the objective falls without bound (an UNBOUNDED certificate) at this iteration, at
#: twice it, and so on, and at maxiter (the bounded examples converge in under 16).
FBN_UNBOUNDED_CHECK = 16
#: Line-search trials per iteration of the convex interior point behind method "kkt"
#: (halving: 2**-20 ~ 1e-6 is the smallest step tried; more trials only burn time at the
#: roundoff floor, where every item must accept or exhaust its trials).
CONVEX_KKT_MAXLS = 20
#: The convex interior point's start from a strictly feasible x: each multiplier at
#: least this fraction of ``||grad f|| / ||grad g_i||`` (the multiplier that balances the
#: objective's gradient alone), not only ``1 / s_i``, so that the first steps see the rows'
#: curvature on the objective's scale (robust_ls, 30 batches of 32: 547 -> 498 iterations,
#: the slowest batch 34 -> 24; 0.1 gave one batch of 52; sqrt_lasso, risk_portfolio and
#: logsumexp_constrained within 1%).
CONVEX_DUAL_START = 0.3
#: The convex interior point tries to finish by Newton's method on the KKT equations of
#: its active set once every running item's error is below this, and again after each
#: further hundredfold decrease (:mod:`optlayer.solvers.interior_point`). 0: never.
#: Seeds 0-3 at batch 32, interior point iterations with / without: sqrt_lasso 21 / 51,
#: logsumexp_constrained 27 / 43, risk_portfolio 36 / 64 (1e-3: 25, 29, 39).
CONVEX_POLISH_BELOW = 1e-2
#: Newton steps of that polish at most (fewer where every item's KKT residual falls
#: below a tenth of the tolerance first; one host sync per step).
CONVEX_POLISH_NEWTON = 6
#: After this many Newton steps the polish corrects its active set once (rows whose
#: multiplier turned negative leave, violated rows join). Seeds 0-9 at batch 32, row
#: evaluations of the polish for a correction after 1 / 2 / 3 steps against a second
#: polish on the corrected set: sqrt_lasso 47 / 55 / 63 against 72, risk_portfolio
#: 47 / 46 / 49 against 54 (after 1 step: one interior point iteration more),
#: logsumexp_constrained 32 in every case; forward+backward 0.93x, 0.97x and 1.00x the
#: time after 2 steps.
CONVEX_POLISH_SWITCH = 2
#: The polish runs on problems whose KKT system (unknowns, rows and equalities: ``n + r +
#: q``) has at most this many rows. Its Newton system has that size where the interior
#: point's has ``n`` (the rows eliminated); past the point where the factorization's
#: flops, not the number of tensor operations, set the time, it costs more than the
#: iterations it saves. Batch 32, forward time with / without the polish: sqrt_lasso at
#: 15, 43, 63, 103 rows 0.85x, 0.90x, 1.07x, 1.38x; risk_portfolio at 12, 32, 62, 92
#: rows 0.74x, 0.74x, 0.75x, 1.11x.
CONVEX_POLISH_MAX_SIZE = 48
#: Where the start of the convex interior point is not strictly inside the rows that atom
#: domains imply (``x = 0`` for ``log(x)``), it moves to the point maximising their margin
#: ``t <= 1`` less this weight times ``|z - z0|^2 / 2`` (small: the margin, not the
#: distance, decides; positive: the point is unique and near the old start).
DOMAIN_START_WEIGHT = 1e-3
#: Mirror descent's first step comes from the curvature at the initial point (see
#: iterate.mirror_solve); at most this (linear objectives have no curvature).
MD_STEP_MAX = 1e3
#: Forward-backward Newton: trial steps 1, 1/2, ... tried in one stacked evaluation once a
#: line search has been needed (then halving on, up to FBN_MAXLS trials).
FBN_LS_BATCH = 4
#: A Newton step on a fixed-point residual is kept where it cuts ||T(z) - z|| at least
#: by this factor (else first-order iterations go on for the batch).
FP_NEWTON_DECREASE = 0.9
#: Newton on the normal map (iterate.normal_newton_solve: a non-quadratic f with a
#: closed-form model): items still running after this many iterations, or whose step
#: was halved NORMAL_NEWTON_MAXLS times without cutting the residual, are finished by
#: FISTA with Newton steps (iterate.prox_grad_solve).
NORMAL_NEWTON_MAXITER = 30
NORMAL_NEWTON_MAXLS = 30
#: Its step eta = c / lambda_max(grad^2 f) at the start: (c for f with a closed-form
#: model, c for a quadratic f). Slowest item's iterations summed over seeds 0-19 at
#: batch 32, c = 0.5 / 1 / 2 / 3: sqrt_lasso 129 / 112 / 133 / 158; group_lasso (a
#: quadratic f) - / 164 / 148 / 146, 149 at 1.5.
NORMAL_NEWTON_STEP = (1.0, 2.0)

#: interior point step lengths tried, as fractions of the step to the boundary,
#: where the full one would grow the complementarity gap by more than
#: IPM_GAP_GROWTH times the (normalized) residual it removes
#: (_qp_ipm.guarded_step): Mehrotra's corrector can make the gap grow, and on
#: some feasible QPs its steps then cycle between two gaps without converging.
#: A tighter bound (no growth at all, or growth paid by the residual one for
#: one) slowed LPs: quantile_regression took 29-31 iterations instead of 8
IPM_STEP_LADDER = (1.0, 0.5, 0.25, 0.1)
IPM_GAP_GROWTH = 100.0
