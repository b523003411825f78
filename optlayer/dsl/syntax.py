"""From ``.opt`` text to the AST: grammar loading, the LALR parser, syntax errors.

The grammar is ``grammar/optlayer.lark`` at the top of a source checkout; in
an installed wheel the same file is the resource package ``optlayer.grammar``.
It is read and the LALR parser built once per process, on first use (no cache
files, no pickle).

lark builds its tree while it reduces (no recursion), and the tree is turned
into :mod:`optlayer.dsl.ast` nodes with an explicit stack, so deep nesting
cannot overflow Python's stack: an expression nested more than
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
                                    propagate_positions=True, maybe_placeholders=True,
                                    postlex=brackets, cache=False)
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


# ----------------------------------------------------------------- tree -> AST
def _tok_span(tok) -> Span:
    return Span(tok.line, tok.column, tok.end_line, tok.end_column)


def _meta_span(tree) -> Span | None:
    m = tree.meta
    if getattr(m, "empty", True):
        return None
    return Span(m.line, m.column, m.end_line, m.end_column)


def _number(tok) -> ast.Number:
    text = str(tok)
    if text.isdigit() and len(text) <= 18:
        value: int | float = int(text)
    else:
        value = float(text)  # digits, '.', 'e' only: never evaluated as Python
    return ast.Number(_tok_span(tok), value, text)


def _expr_args(kids) -> tuple:
    return tuple(k for k in kids if isinstance(k, ast.Node))


def _build(data: str, tree, kids: list, span: Span | None, program_span: Span):
    """One lark tree node (children already converted) -> AST node(s)."""
    if data == "number":
        return _number(kids[0])
    if data == "name":
        return ast.Name(_tok_span(kids[0]), str(kids[0]))
    if data in ("add", "sub", "mul", "div", "matmul"):
        op = {"add": "+", "sub": "-", "mul": "*", "div": "/", "matmul": "@"}[data]
        return ast.BinOp(span, op, kids[0], kids[1])
    if data == "negate":
        return ast.Neg(span, kids[0])
    if data == "power":
        return ast.Power(span, kids[0], kids[1])
    if data == "transpose":
        return ast.Transpose(span, kids[0])
    if data == "slice":
        return ast.SliceItem(span, kids[0], kids[1])
    if data == "index":
        items = tuple(it if not (isinstance(it, ast.SliceItem) and it.span is None)
                      else ast.SliceItem(span, it.start, it.stop) for it in kids[1:])
        return ast.Index(span, kids[0], items)
    if data == "call" or data == "set_ref":
        name = kids[0]
        return ast.Call(span, str(name), _tok_span(name), _expr_args(kids[1:]))
    if data == "shape":
        return tuple(kids)
    if data == "attribute":
        return ast.Attribute(_tok_span(kids[0]), str(kids[0]))
    if data == "label":
        return kids[0]
    if data == "dim_item":
        name, default = kids[0], kids[1] if len(kids) > 1 else None
        num = _number(default) if default is not None else None
        end = num.span if num is not None else _tok_span(name)
        return ast.DimDecl(ast.join(_tok_span(name), end), str(name), _tok_span(name), num)
    if data == "dim_decl":
        return tuple(kids[1:])
    if data in ("param_decl", "var_decl"):
        name = kids[1]
        rest = kids[2:]
        shape = rest[0] if rest and isinstance(rest[0], tuple) else None
        attrs = tuple(a for a in rest if isinstance(a, ast.Attribute))
        return ast.LeafDecl(span, data[:-5], str(name), _tok_span(name), shape, attrs)
    if data == "let_decl":
        return ast.LetDecl(span, str(kids[1]), _tok_span(kids[1]), kids[2])
    if data == "objective":
        return ast.ObjectiveStmt(span, str(kids[0]), kids[1])
    if data == "subject_to":
        return ast.SubjectTo(span)
    if data in ("constraint", "membership"):
        label = kids[0] if len(kids) == 4 else None
        body = kids[1:] if label is not None else kids
        lhs, op, rhs = body
        body_span = ast.join(lhs.span, rhs.span)
        lspan = _tok_span(label) if label is not None else None
        if data == "constraint":
            return ast.ConstraintStmt(span, None if label is None else str(label), lspan,
                                      str(op), lhs, rhs, body_span)
        return ast.MembershipStmt(span, None if label is None else str(label), lspan, lhs,
                                  rhs.name, rhs.name_span, rhs.args, rhs.span, body_span)
    if data == "program":
        stmts: list = []
        for k in kids:
            if isinstance(k, list):
                stmts = k  # the statements so far (reused: linear time)
            elif isinstance(k, tuple):
                stmts.extend(k)
            elif isinstance(k, ast.Stmt):
                stmts.append(k)
        return stmts
    if data == "start":
        return ast.Program(program_span, tuple(kids[0]))
    raise OptSyntaxError(f"internal: unknown grammar rule {data!r}", span=span)  # pragma: no cover


_EXPR_RULES = frozenset({"add", "sub", "mul", "div", "matmul", "negate", "power", "transpose",
                         "index", "call", "set_ref", "slice"})


def _to_ast(tree, program_span: Span) -> ast.Program:
    """Convert lark's tree bottom-up with an explicit stack, bounding expression depth."""
    from lark import Tree

    limit = defaults.DSL_MAX_DEPTH
    out: dict[int, object] = {}
    depth: dict[int, int] = {}
    stack = [(tree, False)]
    while stack:
        node, done = stack.pop()
        if not done:
            stack.append((node, True))
            for c in node.children:
                if isinstance(c, Tree):
                    stack.append((c, False))
            continue
        kids = []
        d = 0
        for c in node.children:
            if isinstance(c, Tree):
                kids.append(out.pop(id(c)))
                d = max(d, depth.pop(id(c)))
            else:
                kids.append(c)
        data = str(node.data)
        if data in _EXPR_RULES:
            d += 1
        span = _meta_span(node)
        if d > limit:
            raise OptSyntaxError(
                f"expression nested too deeply (more than {limit} levels)", span=span,
                hint="split it into named parts with let")
        out[id(node)] = _build(data, node, kids, span, program_span)
        depth[id(node)] = d
    return out[id(tree)]


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
        tree = parser.parse(text)
    except lark.exceptions.UnexpectedInput as exc:
        raise _translate(exc, text) from None
    stripped = text.rstrip()
    end = _end_of_input(text)
    whole = Span(1, 1, end.line, end.column) if stripped else Span(1, 1, 1, 1)
    return _to_ast(tree, whole)
