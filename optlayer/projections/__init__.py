"""The projection catalog: ``optlayer.projections.<name>(x, ...)``.

Euclidean projections ``argmin_{z in C} 0.5 ||z - x||^2`` and KL projections
``argmin_{z in C} KL(z, exp(x))`` (the ``kl_*`` entries), batched over leading
dimensions and differentiable in every tensor argument. See docs/catalogs.md.
"""

from optlayer.projections._closed import (
    affine_set,
    box,
    box_section,
    halfspace,
    hypercube,
    hyperplane,
    kl_simplex,
    l1_ball,
    l1_sphere,
    l2_ball,
    l2_sphere,
    linf_ball,
    nonneg,
    psd,
    simplex,
    soc,
    sparse_simplex,
)
from optlayer.projections._iterative import (
    birkhoff,
    kl_birkhoff,
    kl_transport,
    polyhedron,
    transport,
)

__all__ = [
    "nonneg",
    "box",
    "hypercube",
    "hyperplane",
    "halfspace",
    "affine_set",
    "polyhedron",
    "simplex",
    "sparse_simplex",
    "l1_ball",
    "l1_sphere",
    "l2_ball",
    "l2_sphere",
    "linf_ball",
    "box_section",
    "soc",
    "psd",
    "transport",
    "birkhoff",
    "kl_simplex",
    "kl_transport",
    "kl_birkhoff",
]
