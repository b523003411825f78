"""From ``.opt`` text to the AST: grammar loading, the LALR parser, syntax errors.

The grammar is ``grammar/optlayer.lark`` at the top of a source checkout; in
an installed wheel the same file is the resource package ``optlayer.grammar``.
It is read and the LALR parser built once per process, on first use (no cache
files, no pickle).

The AST is built by parse actions that lark calls as it reduces (no parse
tree, no recursion), so deep nesting cannot overflow Python's stack; spans
come from the first and last token of each rule. An expression nested more than
:data:`optlayer.defaults.DSL_MAX_DEPTH` levels, or a source longer than
:data:`optlayer.defaults.DSL_MAX_SOURCE_CHARS` characters, is an
:class:`~optlayer.errors.OptSyntaxError`. Lark's errors are translated into
``OptSyntaxError`` with the position, a caret, what was expected in words and
a hint for the usual slips (``=`` for ``==``, ``<`` for ``<=``, ``**`` for ``^``).
"""

from __future__ import annotations

import threading
from pathlib import Path

from optlayer import defaults
from optlayer.dsl import ast
from optlayer.errors import OptSyntaxError, Span

__all__ = ["grammar_text", "get_parser", "parse_program", "normalize_source", "KEYWORDS"]

#: Words the grammar reserves; they cannot name dims, parameters, variables or lets.
KEYWORDS = frozenset({"dim", "param", "var", "let", "minimize", "maximize", "subject", "to",
                      "in"})

_LOCK = threading.Lock()
_PARSER = None
_BRACKETS = None


def _checkout_grammar() -> Path:
    """Where the grammar sits in a source checkout: ``<repo>/grammar/optlayer.lark``."""
    return Path(__file__).resolve().parents[2] / "grammar" / "optlayer.lark"


def grammar_text() -> str:
    """The text of ``optlayer.lark`` (source checkout first, then the installed resource)."""
    here = _checkout_grammar()
    if here.is_file():
        return here.read_text(encoding="utf-8")
    from importlib.resources import files

    return files("optlayer.grammar").joinpath("optlayer.lark").read_text(encoding="utf-8")


class _Brackets:
    """Post-lexer: drops newlines inside ``( )`` and ``[ ]`` and remembers open brackets.

    The open brackets of the last parse in this thread are kept so a syntax
    error at the end of input can say which bracket was never closed.
    """

    always_accept = ("_NL",)

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def opened(self) -> list:
        return getattr(self._local, "opened", [])

    def process(self, stream):
        opened: list = []
        self._local.opened = opened
        for tok in stream:
            kind = tok.type
            if kind == "LPAR" or kind == "LSQB":
                opened.append(tok)
            elif kind == "RPAR" or kind == "RSQB":
                if opened:
                    opened.pop()
            elif kind == "_NL" and opened:
                continue
            yield tok


def get_parser():
    """The LALR parser of the language, built once per process (thread-safe)."""
    global _PARSER, _BRACKETS
    if _PARSER is None:
        with _LOCK:
            if _PARSER is None:
                import lark

                brackets = _Brackets()
                _PARSER = lark.Lark(grammar_text(), parser="lalr", lexer="contextual",
                                    keep_all_tokens=True, maybe_placeholders=True,
                                    postlex=brackets, transformer=_Actions(), cache=False)
                _BRACKETS = brackets
    return _PARSER


# ------------------------------------------------------------------- source text
_ODD_BREAKS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def normalize_source(text: str) -> str:
    """Line ends as ``\\n`` (``\\r\\n`` and lone ``\\r`` converted).

    Other characters that Python's ``splitlines`` treats as line breaks are
    not part of the language; they stay, and are reported as unexpected
    characters.
    """
    return text.replace("\r\n", "\n").replace("\r", "\n")


def display_source(text: str) -> str:
    """The text used for drawing carets: odd line-break characters shown as spaces."""
    if any(c in text for c in _ODD_BREAKS):
        return text.translate({ord(c): " " for c in _ODD_BREAKS})
    return text


def _end_of_input(text: str) -> Span:
    """A one-column span just past the last non-blank character of ``text``."""
    stripped = text.rstrip()
    line = stripped.count("\n") + 1
    column = len(stripped) - (stripped.rfind("\n") + 1) + 1
    return Span.point(line, column)


def _position(text: str, offset: int) -> Span:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return Span.point(line, column)


# ---------------------------------------------------------------- syntax errors
_READABLE = {
    "NAME": "a name", "NUMBER": "a number", "COMPARE": "a comparison (==, <=, >=)",
    "_NL": "end of line", "$END": "end of input", "SEMICOLON": "';'", "COMMA": "','",
    "EQUAL": "'='", "LSQB": "'['", "RSQB": "']'", "COLON": "':'", "LPAR": "'('",
    "RPAR": "')'", "PLUS": "'+'", "MINUS": "'-'", "STAR": "'*'", "SLASH": "'/'",
    "AT": "'@'", "CIRCUMFLEX": "'^'", "QUOTE": "a transpose (')",
    "DIM": "'dim'", "PARAM": "'param'", "VAR": "'var'", "LET": "'let'",
    "MINIMIZE": "'minimize'", "MAXIMIZE": "'maximize'", "SUBJECT": "'subject'",
    "TO": "'to'", "IN": "'in'",
}
_EXPR_START = {"NAME", "NUMBER", "LPAR", "MINUS"}
_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH", "AT", "CIRCUMFLEX", "QUOTE", "LSQB"}
_STMT_START = {"DIM", "PARAM", "VAR", "LET", "MINIMIZE", "MAXIMIZE", "SUBJECT"}
_STMT_END = {"_NL", "SEMICOLON", "$END"}


def describe_expected(expected) -> str:
    """Terminal names as words: ``{"NAME", "NUMBER", "LPAR", "MINUS"}`` -> ``an expression``."""
    left = set(expected)
    words = []
    if _STMT_START <= left:
        words.append("a statement (dim, param, var, let, minimize, maximize, subject to) "
                     "or a constraint")
        left -= _STMT_START | _EXPR_START | _STMT_END | {"IN"}
    if _EXPR_START <= left:
        words.append("an expression")
        left -= _EXPR_START
    if _OPERATORS <= left:
        words.append("an operator")
        left -= _OPERATORS
    ends = left & _STMT_END
    if ends and (ends != {"$END"} or len(left) > 1):
        left -= _STMT_END
        tail = "the end of the statement"
    elif ends:
        left -= ends
        tail = "the end of input"
    else:
        tail = None
    words += sorted(_READABLE.get(t, t) for t in left)
    if tail:
        words.append(tail)
    if not words:
        return "nothing more"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _describe_token(tok) -> str:
    kind = tok.type
    if kind == "$END":
        return "end of input"
    if kind == "_NL":
        return "end of line"
    if kind == "NAME":
        return f"the name {str(tok)!r}"
    if kind == "NUMBER":
        return f"the number {tok}"
    if kind in ("DIM", "PARAM", "VAR", "LET", "MINIMIZE", "MAXIMIZE", "SUBJECT", "TO", "IN"):
        return f"the keyword {str(tok)!r}"
    return repr(str(tok))


def _hint(text: str, found, expected: set, span: Span) -> str | None:
    """A suggestion for the usual slips, or ``None``."""
    value = str(found) if found is not None else ""
    kind = getattr(found, "type", None)
    line = text.split("\n")[span.line - 1] if span.line - 1 < text.count("\n") + 1 else ""
    before = line[: span.column - 1].rstrip()
    if kind == "EQUAL" and "COMPARE" in expected:
        return "use == for an equality constraint (= is for dim and let)"
    if value == "*" and before.endswith("*"):
        return "powers are written x ^ 2"
    if kind == "LPAR" and "LSQB" in expected and before.split()[:1] in (["param"], ["var"]):
        return "shapes are written in brackets: param x[n]"
    opened = _BRACKETS.opened
    if opened and kind in ("$END", "SUBJECT", "_NL", "DIM", "PARAM", "VAR", "LET",
                           "MINIMIZE", "MAXIMIZE"):
        tok = opened[-1]
        return f"the {str(tok)!r} at line {tok.line}, column {tok.column} is never closed"
    if kind == "SUBJECT":
        return "put `subject to` on its own line (or after ;)"
    if kind in ("RPAR", "RSQB") and not opened:
        return f"this {value!r} closes no bracket"
    if kind == "$END" and expected == {"NAME"} and before.endswith(" in"):
        return "name a set: " + ", ".join(_set_names())
    if kind == "NAME" and before.endswith("subject"):
        return "write `subject to`"
    return None


def _acceptable(exc, fallback) -> set:
    """The terminals that really can come next (LALR lookaheads over-approximate them)."""
    ip = getattr(exc, "interactive_parser", None)
    if ip is not None:
        try:
            return set(ip.accepts())
        except Exception:  # pragma: no cover - lark internals; fall back to its own set
            pass
    return set(fallback or ())


def _set_names() -> list[str]:
    from optlayer.ir import set_names

    return list(set_names())


def _translate(exc, text: str) -> OptSyntaxError:
    import lark

    if isinstance(exc, lark.exceptions.UnexpectedCharacters):
        span = Span.point(exc.line, exc.column)
        char = text[exc.pos_in_stream] if exc.pos_in_stream < len(text) else ""
        hint = None
        if char in "<>":
            hint = "strict inequalities are not supported; use <= or >="
        elif char == "!":
            hint = "there is no != constraint; constraints are ==, <= or >="
        elif char == '"' or char == "`":
            hint = "the language has no strings"
        elif char == "\t":
            hint = None
        shown = char if char.isprintable() else repr(char)[1:-1]
        return OptSyntaxError(f"unexpected character {shown!r}", span=span,
                              why=f"expected {describe_expected(_acceptable(exc, exc.allowed))}",
                              hint=hint)
    if isinstance(exc, lark.exceptions.UnexpectedToken):
        tok = exc.token
        expected = _acceptable(exc, exc.expected)
        if tok.type == "$END":
            span = _end_of_input(text)
        else:
            end_col = tok.end_column if tok.end_line == tok.line else tok.column + 1
            span = Span(tok.line, tok.column, tok.line, max(end_col, tok.column + 1))
        return OptSyntaxError(
            f"expected {describe_expected(expected)}, found {_describe_token(tok)}",
            span=span, hint=_hint(text, tok, expected, span))
    if isinstance(exc, lark.exceptions.UnexpectedEOF):
        return OptSyntaxError(
            f"expected {describe_expected(exc.expected or ())}, found end of input",
            span=_end_of_input(text))
    return OptSyntaxError(f"cannot parse: {exc}")


# ------------------------------------------------------ parse actions -> AST
def _tok_span(tok) -> Span:
    return Span(tok.line, tok.column, tok.end_line, tok.end_column)


def _start_of(x) -> tuple[int, int]:
    if isinstance(x, ast.Node):
        return x.span.line, x.span.column
    return x.line, x.column


def _end_of(x) -> tuple[int, int]:
    if isinstance(x, ast.Node):
        return x.span.end_line, x.span.end_column
    return x.end_line, x.end_column


def _span(first, last) -> Span:
    """From the start of ``first`` to the end of ``last`` (tokens or nodes)."""
    return Span(*_start_of(first), *_end_of(last))


def _number(tok) -> ast.Number:
    text = str(tok)
    if text.isdigit() and len(text) <= 18:
        value: int | float = int(text)
    else:
        value = float(text)  # digits, '.', 'e' only: never evaluated as Python
    return ast.Number(_tok_span(tok), value, text)


def _depth(span: Span, *parts) -> int:
    """Depth of a node spanning ``span`` over ``parts``; too deep is an OptSyntaxError there."""
    d = 1 + max((p.depth for p in parts if isinstance(p, ast.Expr)), default=0)
    if d > defaults.DSL_MAX_DEPTH:
        raise OptSyntaxError(
            f"expression nested too deeply (more than {defaults.DSL_MAX_DEPTH} levels)",
            span=span, hint="split it into named parts with let")
    return d


def _nodes(kids) -> list:
    """The AST nodes among ``kids`` (punctuation tokens and placeholders dropped)."""
    return [k for k in kids if isinstance(k, ast.Node)]


class _Shape:
    """``[d1, d2]`` of a declaration: the size expressions and the closing bracket."""

    __slots__ = ("items", "close")

    def __init__(self, items, close):
        self.items, self.close = items, close


_OPS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "matmul": "@"}


class _Actions:
    """lark parse actions (called as rules reduce): build AST nodes, nothing else.

    The parser keeps every token (``keep_all_tokens``), so spans are taken from
    the first and last child, brackets and keywords included. The only check
    made here is structural: the nesting depth bound. Names, shapes and
    statement order are checked after parsing (:mod:`optlayer.dsl.lower`).
    """

    # expressions
    def number(self, kids):
        return _number(kids[0])

    def name(self, kids):
        return ast.Name(_tok_span(kids[0]), str(kids[0]))

    def _binop(self, kids, data):
        left, _op, right = kids
        span = _span(left, right)
        return ast.BinOp(span, _OPS[data], left, right, depth=_depth(span, left, right))

    def add(self, kids):
        return self._binop(kids, "add")

    def sub(self, kids):
        return self._binop(kids, "sub")

    def mul(self, kids):
        return self._binop(kids, "mul")

    def div(self, kids):
        return self._binop(kids, "div")

    def matmul(self, kids):
        return self._binop(kids, "matmul")

    def negate(self, kids):
        span = _span(kids[0], kids[1])
        return ast.Neg(span, kids[1], depth=_depth(span, kids[1]))

    def power(self, kids):
        base, _hat, exponent = kids
        span = _span(base, exponent)
        return ast.Power(span, base, exponent, depth=_depth(span, base, exponent))

    def transpose(self, kids):
        span = _span(kids[0], kids[1])
        return ast.Transpose(span, kids[0], depth=_depth(span, kids[0]))

    def slice(self, kids):
        start, colon, stop = kids
        return ast.SliceItem(_span(start if start is not None else colon,
                                   stop if stop is not None else colon), start, stop)

    def index(self, kids):
        base, items = kids[0], _nodes(kids[2:-1])
        parts = [base] + [e for it in items
                          for e in ((it.start, it.stop) if isinstance(it, ast.SliceItem)
                                    else (it,))]
        span = _span(base, kids[-1])
        return ast.Index(span, base, tuple(items), depth=_depth(span, *parts))

    def call(self, kids):
        args = _nodes(kids[2:-1])
        span = _span(kids[0], kids[-1])
        return ast.Call(span, str(kids[0]), _tok_span(kids[0]), tuple(args),
                        depth=_depth(span, *args))

    def set_ref(self, kids):  # a bare set name has no brackets
        if len(kids) == 1:
            return ast.Call(_tok_span(kids[0]), str(kids[0]), _tok_span(kids[0]), ())
        return self.call(kids)

    def primary(self, kids):  # "(" expr ")": the parentheses make no node
        return kids[1]

    # declarations
    def shape(self, kids):
        return _Shape(tuple(_nodes(kids)), kids[-1])

    def attribute(self, kids):
        return ast.Attribute(_tok_span(kids[0]), str(kids[0]))

    def dim_item(self, kids):
        name = kids[0]
        num = _number(kids[2]) if len(kids) == 3 else None
        return ast.DimDecl(_span(name, kids[-1]), str(name), _tok_span(name), num)

    def dim_decl(self, kids):
        return tuple(k for k in kids if isinstance(k, ast.DimDecl))

    def _leaf(self, kids, kind):
        name, rest = kids[1], kids[2:]
        shape = rest[0].items if rest and isinstance(rest[0], _Shape) else None
        attrs = tuple(a for a in rest if isinstance(a, ast.Attribute))
        last = kids[-1].close if isinstance(kids[-1], _Shape) else kids[-1]
        return ast.LeafDecl(_span(kids[0], last), kind, str(name), _tok_span(name), shape,
                            attrs)

    def param_decl(self, kids):
        return self._leaf(kids, "param")

    def var_decl(self, kids):
        return self._leaf(kids, "var")

    def let_decl(self, kids):
        return ast.LetDecl(_span(kids[0], kids[3]), str(kids[1]), _tok_span(kids[1]), kids[3])

    def objective(self, kids):
        return ast.ObjectiveStmt(_span(kids[0], kids[1]), str(kids[0]), kids[1])

    def subject_to(self, kids):
        return ast.SubjectTo(_span(kids[0], kids[1]))

    def label(self, kids):
        return kids[0]

    def _labelled(self, kids):
        if len(kids) == 4:
            label, lhs, op, rhs = kids
            return label, _tok_span(label), lhs, op, rhs
        lhs, op, rhs = kids
        return None, None, lhs, op, rhs

    def constraint(self, kids):
        label, lspan, lhs, op, rhs = self._labelled(kids)
        body = _span(lhs, rhs)
        return ast.ConstraintStmt(_span(kids[0], rhs), None if label is None else str(label),
                                  lspan, str(op), lhs, rhs, body)

    def membership(self, kids):
        label, lspan, lhs, _in, ref = self._labelled(kids)
        return ast.MembershipStmt(_span(kids[0], ref), None if label is None else str(label),
                                  lspan, lhs, ref.name, ref.name_span, ref.args, ref.span,
                                  _span(lhs, ref))

    def program(self, kids):
        stmts: list = []
        for k in kids:
            if isinstance(k, list):
                stmts = k  # the statements so far (reused: linear time)
            elif isinstance(k, tuple):
                stmts.extend(k)
            elif isinstance(k, ast.Stmt):
                stmts.append(k)
        return stmts

    def start(self, kids):
        return kids[0]


def parse_program(text: str) -> ast.Program:
    """Parse ``.opt`` source text into an :class:`~optlayer.dsl.ast.Program`.

    ``text`` should already be normalized (:func:`normalize_source`).

    Raises:
        OptSyntaxError: the text does not follow the grammar, is longer than
            ``DSL_MAX_SOURCE_CHARS`` or nests deeper than ``DSL_MAX_DEPTH``.
            The error has no source attached yet (the caller attaches it).
    """
    limit = defaults.DSL_MAX_SOURCE_CHARS
    if len(text) > limit:
        raise OptSyntaxError(f"input too large: {len(text)} characters (the limit is {limit})",
                             span=_position(text, limit),
                             hint="one problem per file; a model of this size should be "
                                  "built with the Python API")
    import lark

    parser = get_parser()
    try:
        statements = parser.parse(text)
    except lark.exceptions.UnexpectedInput as exc:
        raise _translate(exc, text) from None
    end = _end_of_input(text)
    whole = Span(1, 1, end.line, end.column) if text.strip() else Span(1, 1, 1, 1)
    return ast.Program(whole, tuple(statements))
