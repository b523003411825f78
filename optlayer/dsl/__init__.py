"""optlayer.dsl: the ``.opt`` language -- grammar, parser with spans, AST, lowering to the IR.

``source text --lark--> parse tree --> AST (spans) --> typed IR`` (DESIGN.md section 4).
Most users call :func:`optlayer.parse` / :func:`optlayer.check`; this package
exposes the steps for tools.
"""

from optlayer.dsl.lower import lower_program
from optlayer.dsl.syntax import (
    KEYWORDS,
    describe_expected,
    display_source,
    get_parser,
    grammar_text,
    normalize_source,
    parse_program,
)

__all__ = [
    "KEYWORDS",
    "describe_expected",
    "display_source",
    "get_parser",
    "grammar_text",
    "lower_program",
    "normalize_source",
    "parse_program",
]
