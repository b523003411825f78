"""The small vocabularies of the IR: curvature, sign, monotonicity, smoothness.

They are enums (STYLE.md: enums, not strings) with the arithmetic that the
DCP composition rule and the sign rules need, written once here.
"""

from __future__ import annotations

import enum

__all__ = ["Curvature", "Sign", "Mono", "Domain"]


class Curvature(enum.Enum):
    """Curvature of an expression in its variables (parameters count as constants).

    ``CONSTANT`` < ``AFFINE`` < ``CONVEX``/``CONCAVE`` < ``UNKNOWN`` in the
    lattice: an affine expression is both convex and concave, a constant one is
    affine.
    """

    CONSTANT = "constant"
    AFFINE = "affine"
    CONVEX = "convex"
    CONCAVE = "concave"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value

    @property
    def is_constant(self) -> bool:
        return self is Curvature.CONSTANT

    @property
    def is_affine(self) -> bool:
        return self in (Curvature.CONSTANT, Curvature.AFFINE)

    @property
    def is_convex(self) -> bool:
        return self in (Curvature.CONSTANT, Curvature.AFFINE, Curvature.CONVEX)

    @property
    def is_concave(self) -> bool:
        return self in (Curvature.CONSTANT, Curvature.AFFINE, Curvature.CONCAVE)

    @property
    def is_dcp(self) -> bool:
        return self is not Curvature.UNKNOWN

    def negate(self) -> Curvature:
        """Curvature of ``-e`` given the curvature of ``e``."""
        if self is Curvature.CONVEX:
            return Curvature.CONCAVE
        if self is Curvature.CONCAVE:
            return Curvature.CONVEX
        return self

    @staticmethod
    def from_flags(convex: bool, concave: bool) -> Curvature:
        if convex and concave:
            return Curvature.AFFINE
        if convex:
            return Curvature.CONVEX
        if concave:
            return Curvature.CONCAVE
        return Curvature.UNKNOWN


class Sign(enum.Enum):
    """Sign of every entry of an expression: ``NONNEG`` (>= 0), ``NONPOS``, ``ZERO``, ``UNKNOWN``.

    ``POSITIVE`` (> 0) refines ``NONNEG``; it comes from the ``pos`` attribute
    and from atoms such as ``exp`` and lets ``/`` and ``log`` know a value
    cannot be zero.
    """

    POSITIVE = "positive"
    NONNEG = "nonneg"
    ZERO = "zero"
    NONPOS = "nonpos"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value

    @property
    def is_nonneg(self) -> bool:
        return self in (Sign.POSITIVE, Sign.NONNEG, Sign.ZERO)

    @property
    def is_nonpos(self) -> bool:
        return self in (Sign.NONPOS, Sign.ZERO)

    @property
    def is_positive(self) -> bool:
        return self is Sign.POSITIVE

    def negate(self) -> Sign:
        return {
            Sign.POSITIVE: Sign.NONPOS,
            Sign.NONNEG: Sign.NONPOS,
            Sign.NONPOS: Sign.NONNEG,
        }.get(self, self)

    def add(self, other: Sign) -> Sign:
        """Sign of ``a + b``."""
        if self is Sign.ZERO:
            return other
        if other is Sign.ZERO:
            return self
        if self.is_nonneg and other.is_nonneg:
            pos = self.is_positive or other.is_positive
            return Sign.POSITIVE if pos else Sign.NONNEG
        if self.is_nonpos and other.is_nonpos:
            return Sign.NONPOS
        return Sign.UNKNOWN

    def mul(self, other: Sign) -> Sign:
        """Sign of ``a * b``."""
        if self is Sign.ZERO or other is Sign.ZERO:
            return Sign.ZERO
        if self is Sign.UNKNOWN or other is Sign.UNKNOWN:
            return Sign.UNKNOWN
        if self.is_positive and other.is_positive:
            return Sign.POSITIVE
        if self.is_nonneg == other.is_nonneg:
            return Sign.NONNEG
        return Sign.NONPOS

    @staticmethod
    def of_value(value: float) -> Sign:
        if value > 0:
            return Sign.POSITIVE
        if value < 0:
            return Sign.NONPOS
        if value == 0:
            return Sign.ZERO
        return Sign.UNKNOWN  # nan


class Mono(enum.Enum):
    """Monotonicity of an atom in one argument (may depend on the argument's sign)."""

    INCREASING = "nondecreasing"
    DECREASING = "nonincreasing"
    NONMONOTONE = "nonmonotone"

    def __str__(self) -> str:
        return self.value

    @staticmethod
    def by_sign(sign: Sign) -> Mono:
        """``|x|``-like atoms: increasing where x >= 0, decreasing where x <= 0."""
        if sign.is_nonneg:
            return Mono.INCREASING
        if sign.is_nonpos:
            return Mono.DECREASING
        return Mono.NONMONOTONE

    @staticmethod
    def scaled_by(sign: Sign) -> Mono:
        """Monotonicity of ``c * x`` in ``x`` for a constant ``c`` of the given sign.

        The same table as :meth:`by_sign`, read the other way round.
        """
        return Mono.by_sign(sign)


class Domain(enum.Enum):
    """Where an atom's argument must lie (used by numeric tests and binding checks)."""

    REAL = "real"
    NONNEG = "nonneg"
    POSITIVE = "positive"
