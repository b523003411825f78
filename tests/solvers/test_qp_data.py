"""optlayer.solvers._qp_ipm: the data layout (stacked and transposed matrices and the
views into them, unstacked data, the ``Q + rho A'A`` block) that the kernels compute
with."""

from __future__ import annotations

import pytest
import torch

from optlayer import defaults
from optlayer.solvers import _qp_ipm as ipm

F64 = torch.float64


@pytest.mark.parametrize("rows, cols", [(3, 4), (26, 14), (29, 14), (90, 40)])
def test_matvec_equals_the_plain_product_on_both_sides_of_the_threshold(rows, cols):
    g = torch.Generator().manual_seed(rows * cols)
    M = torch.randn(5, rows, cols, generator=g, dtype=F64)
    v = torch.randn(5, cols, 1, generator=g, dtype=F64)
    c = torch.randn(5, rows, 1, generator=g, dtype=F64)
    Mt = M.transpose(1, 2).contiguous()
    transposed = rows * cols >= defaults.MATVEC_TRANSPOSED_MIN
    assert transposed == (rows * cols >= 400)
    out = ipm.matvec(M, v, Mt)
    assert out.shape == (5, rows, 1)
    torch.testing.assert_close(out, M @ v, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(ipm.matvec_add(c, M, v, Mt, alpha=-2.0), c - 2.0 * (M @ v),
                               rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(ipm.matvec(M, v, None), M @ v, rtol=0, atol=0)


def _raw():
    g = torch.Generator().manual_seed(0)
    B, n, m, me = 3, 6, 4, 2
    M = torch.randn(B, n, n, generator=g, dtype=F64)
    Q = M @ M.transpose(1, 2)
    Q = 0.5 * (Q + Q.transpose(1, 2))         # symmetric to the bit
    p = torch.randn(B, n, generator=g, dtype=F64)
    G = torch.randn(B, m, n, generator=g, dtype=F64)
    h = torch.rand(B, m, generator=g, dtype=F64)
    A = torch.randn(B, me, n, generator=g, dtype=F64)
    b = torch.randn(B, me, generator=g, dtype=F64)
    return Q, p, G, h, A, b


def _data(augmented):
    return ipm.make_data(*_raw(), augmented=augmented)


def test_data_without_the_augmented_block_is_augmented_on_demand():
    full, bare = _data(True), _data(False)
    assert bare.AtA is None
    torch.testing.assert_close(ipm.augment(bare).AtA, full.AtA, rtol=0, atol=0)
    torch.testing.assert_close(full.AtA, full.Q + full.At @ full.A, rtol=1e-13, atol=1e-13)
    # the regularization scale: 1 + max|Q| + max|A'A| (the largest entry of A'A is a
    # column's squared norm)
    expect = 1.0 + full.Q.abs().amax(dim=(1, 2)) + (full.At @ full.A).abs().amax(dim=(1, 2))
    torch.testing.assert_close(full.reg_abs.view(-1),
                               defaults.IPM_REG_FACTOR * defaults.eps(F64) * expect,
                               rtol=1e-12, atol=0)


def test_stacked_data_holds_views_of_its_two_stacks():
    d = _data(False)
    n, m = d.Q.shape[1], d.G.shape[1]
    assert d.KAt.is_contiguous() and d.KA.is_contiguous()
    torch.testing.assert_close(d.KAt, d.KA.transpose(1, 2), rtol=0, atol=0)
    # Q, G, A are views of [Q; G; A], G' and A' of [Q G' A']
    for block, start in ((d.Q, 0), (d.G, n), (d.A, n + m)):
        assert block.data_ptr() == d.KA[:, start:].data_ptr()
    for block, start in ((d.KT, n), (d.Gt, n), (d.At, n + m)):
        assert block.data_ptr() == d.KAt[:, :, start:].data_ptr()
    torch.testing.assert_close(d.Gt, d.G.transpose(1, 2), rtol=0, atol=0)
    torch.testing.assert_close(d.At, d.A.transpose(1, 2), rtol=0, atol=0)


def test_unstacked_data_gives_the_same_products_and_stacks_on_demand():
    stacked = _data(False)
    bare = ipm.make_data(*_raw(), augmented=False, stacked=False)
    assert bare.KA is None and bare.KT is None and bare.KAt is None
    g = torch.Generator().manual_seed(1)
    B, n = stacked.Q.shape[:2]
    v = torch.randn(B, n, 1, generator=g, dtype=F64)
    z = torch.rand(B, stacked.G.shape[1], 1, generator=g, dtype=F64)
    y = torch.randn(B, stacked.A.shape[1], 1, generator=g, dtype=F64)
    for a, b in zip(ipm.split(bare, v), ipm.split(stacked, v), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(ipm.dual_product(bare, z, y), ipm.dual_product(stacked, z, y),
                               rtol=1e-13, atol=1e-13)
    again = ipm.stack(bare)
    for name in ("KA", "KAt", "Q", "G", "A", "Gt", "At"):
        torch.testing.assert_close(getattr(again, name), getattr(stacked, name), rtol=0, atol=0)
    assert ipm.stack(again) is again


@pytest.mark.parametrize("stacked", [True, False])
def test_take_selects_items_of_stacked_and_unstacked_data(stacked):
    d = ipm.make_data(*_raw(), augmented=True, stacked=stacked)
    idx = torch.tensor([2, 0])
    part = ipm.take(d, idx)
    assert (part.KA is None) == (not stacked)
    for name in ("Q", "p", "G", "h", "A", "b", "Gt", "At", "AtA", "reg_abs", "KA", "KAt"):
        whole = getattr(d, name)
        if whole is None:
            assert getattr(part, name) is None
            continue
        torch.testing.assert_close(getattr(part, name), whole[idx], rtol=0, atol=0)


def test_factoring_equality_data_without_the_augmented_block_is_refused():
    with pytest.raises(RuntimeError, match="augment"):
        ipm.factor(_data(False), None)
