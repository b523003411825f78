"""Golden error texts of the .opt language: class, line, column, caret and message.

Each row is one distinct bad input (syntax, names, sizes, shapes, DCP, binding);
the test checks the error class, the reported line and column, the caret run
under the offending text, the one-sentence message and, where the row gives
one, the hint.
"""

import pytest

import optlayer as ol
from optlayer.errors import (
    BindingError,
    NonConvexError,
    OptError,
    OptSyntaxError,
    OptTypeError,
)

V = "var x[3]\n"

# (id, source, dims, class, line, column, caret width, message, hint substring)
CASES = [
    ('eof-after-plus', 'var x\nminimize x +', None,
     OptSyntaxError, 2, 13, 1,
     'expected an expression, found end of input',
     None),
    ('single-equals', 'var x\nminimize x\nsubject to\n    x = 1', None,
     OptSyntaxError, 4, 7, 1,
     "expected an operator, '(', ':', 'in' or a comparison (==, <=, >=), found '='",
     'use == for an equality constraint'),
    ('strict-less', 'var x\nminimize x\nsubject to\n    x < 1', None,
     OptSyntaxError, 4, 7, 1,
     "unexpected character '<'",
     'use <= or >='),
    ('strict-greater', 'var x\nminimize x\nsubject to\n    x > 1', None,
     OptSyntaxError, 4, 7, 1,
     "unexpected character '>'",
     'use <= or >='),
    ('not-equal', 'var x\nminimize x\nsubject to\n    x != 1', None,
     OptSyntaxError, 4, 7, 1,
     "unexpected character '!'",
     'no != constraint'),
    ('double-star', 'var x\nminimize x ** 2', None,
     OptSyntaxError, 2, 13, 1,
     "expected an expression, found '*'",
     'x ^ 2'),
    ('unclosed-paren', 'var x\nminimize sum(x\nsubject to\n    x >= 0', None,
     OptSyntaxError, 3, 1, 7,
     "expected an operator, '(', ')' or ',', found the keyword 'subject'",
     "the '(' at line 2, column 13 is never closed"),
    ('unclosed-bracket-eof', 'var x[3', None,
     OptSyntaxError, 1, 8, 1,
     "expected ',' or ']', found end of input",
     "the '[' at line 1, column 6 is never closed"),
    ('extra-paren', 'var x\nminimize sum(x))', None,
     OptSyntaxError, 2, 16, 1,
     "expected the end of the statement, found ')'",
     'closes no bracket'),
    ('shape-in-parens', 'param x(3)\nminimize 0', None,
     OptSyntaxError, 1, 8, 1,
     "expected '[', a name or the end of the statement, found '('",
     'param x[n]'),
    ('dim-without-name', 'dim\nvar x\nminimize x', None,
     OptSyntaxError, 1, 4, 1,
     'expected a name, found end of line',
     None),
    ('dim-without-size', 'dim n =\nvar x\nminimize x', None,
     OptSyntaxError, 1, 8, 1,
     'expected a number, found end of line',
     None),
    ('in-without-set', 'var x\nminimize x\nsubject to\n    x in', None,
     OptSyntaxError, 4, 9, 1,
     'expected a name, found end of input',
     'simplex'),
    ('let-without-name', 'let = 3', None,
     OptSyntaxError, 1, 5, 1,
     "expected a name, found '='",
     None),
    ('subject-without-to', 'var x\nminimize x\nsubject x >= 0', None,
     OptSyntaxError, 3, 9, 1,
     "expected 'to', found the name 'x'",
     'subject to'),
    ('operator-at-start', '@ x', None,
     OptSyntaxError, 1, 1, 1,
     "expected a statement (dim, param, var, let, minimize, maximize, subject to) or a "
     "constraint, found '@'",
     None),
    ('trailing-comma', 'var x\nminimize max(x,)', None,
     OptSyntaxError, 2, 16, 1,
     "expected an expression, found ')'",
     None),
    ('bad-character', 'var x $', None,
     OptSyntaxError, 1, 7, 1,
     "unexpected character '$'",
     None),
    ('slice-step', 'var x[5]\nminimize sum(x[1:4:2])', None,
     OptSyntaxError, 2, 19, 1,
     "expected ',' or ']', found ':'",
     None),
    ('subject-same-line', 'var x\nminimize x subject to x >= 0', None,
     OptSyntaxError, 2, 12, 7,
     "expected an operator, '(' or the end of the statement, found the keyword 'subject'",
     'its own line'),
    ('keyword-name', 'param to\nminimize 0', None,
     OptSyntaxError, 1, 7, 2,
     "'to' is a keyword and cannot name a param",
     'to_'),
    ('nesting-too-deep', "var x\nminimize " + "-" * 1100 + "x", None,
     OptSyntaxError, 2, 109, 1002,
     'expression nested too deeply (more than 1000 levels)',
     'let'),
    ('input-too-large', "var x\nminimize x\n" + "#" * 100_000, None,
     OptSyntaxError, 3, 99984, 1,
     'input too large: 100017 characters (the limit is 100000)',
     None),
    ('two-objectives', 'var x\nminimize x\nmaximize x', None,
     OptSyntaxError, 3, 1, 10,
     'a second objective (the first is at line 2)',
     None),
    ('subject-before-objective', 'var x\nsubject to\nminimize x', None,
     OptSyntaxError, 2, 1, 10,
     '`subject to` before the objective',
     None),
    ('constraint-before-subject', 'var x\nx >= 0\nminimize x', None,
     OptSyntaxError, 2, 1, 6,
     'a constraint outside `subject to`',
     None),
    ('no-objective', 'var x\n\n', None,
     OptSyntaxError, 1, 6, 1,
     'the problem has no objective',
     'minimize'),
    ('two-subject-to', 'var x\nminimize x\nsubject to\nx >= 0\nsubject to', None,
     OptSyntaxError, 5, 1, 10,
     'a second `subject to` (the first is at line 3)',
     None),
    ('unknown-name', 'var weights[3]\nminimize sum(weight)', None,
     OptTypeError, 2, 14, 6,
     "unknown name 'weight'",
     "did you mean 'weights'?"),
    ('unknown-function', 'var x[3]\nminimize norm3(x)', None,
     OptTypeError, 2, 10, 5,
     "unknown function 'norm3'",
     "did you mean 'norm2'?"),
    ('unknown-set', 'var x[3]\nminimize sum(x)\nsubject to\n    x in simplx', None,
     OptTypeError, 4, 10, 6,
     "unknown set 'simplx'",
     "did you mean 'simplex'?"),
    ('duplicate-name', 'var x\nparam x\nminimize x', None,
     OptTypeError, 2, 7, 1,
     "'x' is already declared (as a var at line 1)",
     None),
    ('duplicate-dim', 'dim n\ndim n = 3\nvar x[n]\nminimize sum(x)', None,
     OptTypeError, 2, 5, 1,
     "'n' is already declared (as a dim at line 1)",
     None),
    ('unknown-dim', 'dim n\nvar x[m]\nminimize sum(x)', None,
     OptTypeError, 2, 7, 1,
     "unknown dim 'm'",
     'dim m'),
    ('unknown-attribute', 'var x nonnegative\nminimize x', None,
     OptTypeError, 1, 7, 11,
     "unknown attribute 'nonnegative' for var x",
     "did you mean 'nonneg'?"),
    ('repeated-attribute', 'var x nonneg nonneg\nminimize x', None,
     OptTypeError, 1, 14, 6,
     "attribute 'nonneg' is given twice",
     None),
    ('dim-as-value', 'dim n = 3\nvar x[n]\nminimize n * sum(x)', None,
     OptTypeError, 3, 10, 1,
     "dim 'n' is a size, not a value",
     None),
    ('param-as-size', 'param k\nvar x[k]\nminimize sum(x)', None,
     OptTypeError, 2, 7, 1,
     "a size must be built from dims and integers; 'k' is a param",
     None),
    ('float-size', 'var x[2.5]\nminimize sum(x)', None,
     OptTypeError, 1, 7, 3,
     'a size must be an integer, got 2.5',
     None),
    ('function-as-value', 'var x[3]\nminimize sum', None,
     OptTypeError, 2, 10, 3,
     "'sum' is a function; call it",
     'sum(...)'),
    ('set-as-function', 'var x[3]\nminimize simplex(x)', None,
     OptTypeError, 2, 10, 7,
     "'simplex' is a set, not a function",
     None),
    ('param-called', 'param y[3]\nvar x[3]\nminimize sum(y(x))', None,
     OptTypeError, 3, 14, 1,
     "'y' is a param, not a function",
     None),
    ('exponent-not-number', 'param p\nvar x\nminimize x ^ p', None,
     OptTypeError, 3, 14, 1,
     'the exponent of ^ must be a number',
     None),
    ('duplicate-label', 'var x[3]\nminimize sum(x)\nsubject to\n    a: x >= 0\n    a: x <= 1', None,
     OptTypeError, 5, 5, 1,
     "constraint label 'a' is used twice (first at line 4)",
     None),
    ('let-cycle', 'var x\nlet a = b + x\nlet b = a\nminimize a', None,
     OptTypeError, 2, 5, 1,
     "let 'a' depends on itself: a -> b -> a",
     None),
    ('dim-zero-default', 'dim n = 0\nvar x[n]\nminimize sum(x)', None,
     OptTypeError, 1, 9, 1,
     'the size of dim n must be a positive integer, got 0',
     None),
    ('atom-as-name', 'var sum\nminimize 0', None,
     OptTypeError, 1, 5, 3,
     "'sum' is an atom of the language and cannot name a var",
     None),
    ('shape-mismatch-add', 'var x[3]\nparam y[4]\nminimize sum(x + y)', None,
     OptTypeError, 3, 14, 5,
     'shape mismatch in `+`: left is [3], right is [4]',
     None),
    ('shape-mismatch-matmul', 'param A[3, 4]\nvar x[3]\nminimize sum(A @ x)', None,
     OptTypeError, 3, 14, 5,
     'shape mismatch in `@`: inner dimensions 4 and 3 differ (left is [3, 4], right is [3])',
     None),
    ('shape-mismatch-constraint',
     'var x[3]\nparam y[4]\nminimize sum(x)\nsubject to\n    x == y', None,
     OptTypeError, 5, 5, 6,
     'shape mismatch in `==`: left is [3], right is [4]',
     None),
    ('nonscalar-objective', 'var x[3]\nminimize x', None,
     OptTypeError, 2, 10, 1,
     'the objective must be a scalar, got shape [3]',
     None),
    ('divide-by-variable', 'var x\nminimize 1 / x', None,
     OptTypeError, 2, 14, 1,
     'the divisor must not depend on variables: x',
     None),
    ('symmetric-not-square', 'param A[3, 4] symmetric\nminimize 0', None,
     OptTypeError, 1, 1, 23,
     'param A is [3, 4]: symmetric and psd need a square matrix',
     None),
    ('index-out-of-range', 'var x[3]\nminimize x[5]', None,
     OptTypeError, 2, 10, 4,
     'shape mismatch in `[]`: index 5 is out of range for a dimension of size 3',
     None),
    ('set-too-many-args', 'var x[3]\nminimize sum(x)\nsubject to\n    x in box(0, 1, 2)', None,
     OptTypeError, 4, 10, 12,
     'set box takes at most 2 argument(s) (lower, upper), got 3',
     None),
    ('atom-arity', 'var x[3]\nminimize norm2(x, x)', None,
     OptTypeError, 2, 10, 11,
     'norm2 takes 1 argument, got 2',
     None),
    ('dcp-minimize-concave', 'var x\nminimize sqrt(x)', None,
     NonConvexError, 2, 10, 7,
     'cannot minimize an expression of concave curvature',
     None),
    ('dcp-maximize-convex', 'var x[3]\nmaximize norm2(x)', None,
     NonConvexError, 2, 10, 8,
     'cannot maximize an expression of convex curvature',
     None),
    ('dcp-unknown-curvature', 'param L[3, 3]\nvar x[3]\nminimize sqrt(sum_squares(L @ x))', None,
     NonConvexError, 3, 10, 24,
     'cannot minimize an expression of unknown curvature',
     'norm2(L @ x)'),
    ('dcp-convex-geq', 'var x[3]\nminimize sum(x)\nsubject to\n    sum_squares(x) >= 1', None,
     NonConvexError, 4, 5, 14,
     'constraint needs concave >= convex: left side has convex curvature',
     None),
    ('dcp-nonaffine-eq', 'var x[3]\nminimize sum(x)\nsubject to\n    norm1(x) == 1', None,
     NonConvexError, 4, 5, 8,
     'constraint needs affine == affine: left side has convex curvature',
     None),
    ('dcp-product-of-vars', 'var x\nvar y\nminimize x * y', None,
     NonConvexError, 3, 10, 5,
     'cannot minimize an expression of unknown curvature',
     'parameters or constants'),
    ('dcp-nonaffine-member', 'var x[3]\nminimize sum(x)\nsubject to\n    square(x) in nonneg', None,
     NonConvexError, 4, 5, 9,
     'the member of set nonneg must be affine, not convex',
     None),
    ('bind-zero', 'dim n = 3\nvar x[n]\nminimize sum(x)', {'n': 0},
     BindingError, 1, 5, 5,
     'dim n must be a positive integer, got 0',
     None),
    ('bind-missing', 'dim n\nvar x[n]\nminimize sum(x)', {},
     BindingError, 1, 5, 1,
     'dim n has no value',
     'dims='),
    ('bind-not-int', 'dim n\nvar x[n]\nminimize sum(x)', {'n': 2.5},
     BindingError, 1, 5, 1,
     'dim n must be a positive integer, got 2.5',
     None),
    ('bind-slice-out-of-range', 'dim n\nvar x[n]\nminimize sum(x[3:5])', {'n': 2},
     BindingError, 3, 14, 6,
     "with dims {'n': 2}: shape mismatch in `[]`: index 3 is out of range for a dimension "
     "of size 2",
     None),
    ('bind-default-out-of-range', 'dim n = 2\nvar x[n]\nminimize x[4]', None,
     BindingError, 3, 10, 4,
     "with dims {'n': 2}: shape mismatch in `[]`: index 4 is out of range for a dimension "
     "of size 2",
     None),
]


def _raise(source, dims):
    with pytest.raises(OptError) as info:
        ol.check(source, dims=dims, filename="m.opt")
    return info.value


@pytest.mark.parametrize(
    "source, dims, cls, line, column, width, message, hint",
    [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_golden_error(source, dims, cls, line, column, width, message, hint):
    err = _raise(source, dims)
    assert type(err) is cls
    assert (err.line, err.column) == (line, column)
    assert err.message == message
    text = str(err).splitlines()
    assert text[0] == f"m.opt:{line}:{column}: {message}"
    shown = source.replace("\r\n", "\n").split("\n")[line - 1]
    gutter = str(line)
    assert text[1] == f"    {gutter} | {shown}"
    assert text[2] == f"    {' ' * len(gutter)} | {' ' * (column - 1)}{'^' * width}"
    if hint is not None:
        assert err.hint is not None and hint in err.hint


def test_catalog_is_large_and_distinct():
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)
    assert len({(c[1], repr(c[2])) for c in CASES}) == len(CASES)
    assert {c[3] for c in CASES} == {OptSyntaxError, OptTypeError, NonConvexError, BindingError}


def test_syntax_error_is_not_a_python_syntax_error():
    err = _raise("minimize +", None)
    assert isinstance(err, OptSyntaxError) and not isinstance(err, SyntaxError)


def test_parse_reports_without_dcp():
    # parse checks names and shapes but not curvature: the DCP row parses fine
    prob = ol.parse("var x\nminimize sqrt(x)")
    assert not prob.is_dcp()


def test_unknown_dim_in_dims_names_it():
    err = _raise("dim n = 3\nvar x[n]\nminimize sum(x)", {"m": 3})
    assert isinstance(err, BindingError)
    assert "unknown dim 'm'" in err.message and err.parameter == "m"


def test_crlf_source_reports_the_same_position():
    err = _raise("var x\r\nminimize x +\r\n", None)
    assert (err.line, err.column) == (2, 13)


def test_filename_defaults_to_string():
    with pytest.raises(OptSyntaxError) as info:
        ol.parse("minimize")
    assert str(info.value).startswith("<string>:1:9: ")


def test_non_string_source_is_a_type_error():
    with pytest.raises(OptTypeError, match="must be a str"):
        ol.parse(b"var x")
