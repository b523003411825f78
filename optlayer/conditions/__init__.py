"""optlayer.conditions: optimality maps F (roots) and T (fixed points), usable with
:func:`optlayer.custom_root` / :func:`optlayer.custom_fixed_point` by anyone.

Table 1 of Blondel et al. (2021): stationarity ``F = ∇₁f``; KKT
``F = (∇f + ∂Gᵀλ + ∂Hᵀν, H, λ∘G)`` (general constraint functions, and the QP
form); proximal-gradient, projected-gradient, mirror-descent, Newton and block
proximal-gradient fixed points. See docs/conditions.md.
"""

from optlayer.conditions._common import batched_grad, batched_hessian, call_projection
from optlayer.conditions.fixed_point import (
    block_prox_grad_step,
    kl_simplex_projection,
    mirror_descent_step,
    proj_grad_step,
    prox_from_projection,
    prox_grad_step,
)
from optlayer.conditions.kkt import kkt, qp_kkt
from optlayer.conditions.stationary import gradient_step, newton_step, stationary

__all__ = [
    "batched_grad",
    "batched_hessian",
    "block_prox_grad_step",
    "call_projection",
    "gradient_step",
    "kkt",
    "kl_simplex_projection",
    "mirror_descent_step",
    "newton_step",
    "proj_grad_step",
    "prox_from_projection",
    "prox_grad_step",
    "qp_kkt",
    "stationary",
]
