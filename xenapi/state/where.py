"""xapi's ``get_all_records_where`` expression language: parse once, evaluate per record.

This mirrors xapi's ``Db_filter`` (``ocaml/database/db_filter_lex.mll``, ``db_filter_parse.mly``,
``db_filter_types.ml``, ``db_filter.ml``) and the way ``Db_cache_impl.find_refs_with_filter``
feeds it: every ``field "name"`` is replaced by the *database string form* of that field
(``Schema.Value.marshal``) and ``=`` is plain string equality.  There are no numbers, no
booleans-as-values, no ``<>``/``!=`` and no escapes.

Lexical rules (as xapi's ocamllex lexer)
----------------------------------------
* Whitespace is exactly space, TAB and LF.  CR is *not* whitespace (a CRLF breaks the lexer).
* Keywords are matched as literal prefixes, case-sensitively and without word boundaries:
  ``true false field and or not`` (so ``nottrue`` lexes as ``not true`` and ``TRUE`` is an error).
* A string is ``"`` followed by any characters except ``"`` (newlines and backslashes included,
  taken literally) and a closing ``"``.  There is no escape: a literal cannot contain ``"``.
* Anything else (bare words, numbers, ``'single'`` quotes, ``<>``, ``!=``, ``&&``) is a lexing
  error.
* EXTENSION: ``<``, ``<=``, ``>`` and ``>=`` are tokens (xapi has none, so no expression xapi
  accepts contains them outside a string).  Directly after one of them, and only there, an
  optionally signed integer may go unquoted (``> 10``).  ``<>`` and ``!=`` stay lexing errors.

Grammar (EBNF; xapi's yacc grammar with its precedence declarations resolved)
-----------------------------------------------------------------------------
::

    where      = expr EOF ;
    expr       = "not" expr                 (* not has the LOWEST precedence: it covers  *)
               | chain ;                    (* everything to its right up to ")" or EOF  *)
    chain      = atom { ("and" | "or") operand } ;        (* and/or: one level, left-assoc *)
    operand    = "not" expr | atom ;
    atom       = "true" | "false"
               | "(" expr ")"
               | value "=" value
               | value "in" "field" STRING               (* EXTENSION, see below *)
               | value ("<" | "<=" | ">" | ">=") cvalue ; (* EXTENSION, see below *)
    value      = STRING                                   (* a literal *)
               | "field" STRING ;                         (* a field's DB string *)
    cvalue     = value | INTEGER ;                        (* INTEGER: unquoted, e.g. -42 *)

This is what xapi's ``%right LNOT`` / ``%left LAND LOR`` (declared in that order, so ``not``
binds *loosest*) produce:

* ``and`` and ``or`` have the same precedence and associate to the left:
  ``a or b and c`` is ``(a or b) and c``; ``a and b or c`` is ``(a and b) or c``.
* ``not`` extends as far right as it can: ``not a and b`` is ``not (a and b)``;
  ``a and not b or c`` is ``a and not (b or c)``.  Parenthesise: ``(not a) and b``.
* An empty (or all-whitespace) expression is a syntax error; ``true`` matches everything.
* ``field "x" = true`` is a syntax error: ``true`` is an expression, not a value; write
  ``field "x" = "true"``.

Evaluation
----------
``field "name"`` denotes ``db_string(record[name])``: what xapi's database stores for the field:

* string, enum, reference (``OpaqueRef:...``): as is;
* bool: ``true`` / ``false``; int: decimal (``Int64.to_string``);
* float: C ``%.18g`` (xapi's ``Printf.sprintf "%0.18g"``), so ``1.0`` is ``1`` and ``0.1`` is
  ``0.100000000000000006``;
* datetime: its wire form (``20250319T04:16:24Z``);
* set: ``('a' 'b')`` (``()`` when empty); map: ``(('k1' 'v1') ('k2' 'v2'))``; each element is the
  DB string of the element in single quotes with ``\\``, ``"`` and ``'`` backslash-escaped
  (xapi's ``SExpr.string_of``).  So ``field "tags"="('a' 'b')"`` matches exactly that set in
  that order, ``field "tags"="a"`` never matches a set, and ``field "tags"="()"`` matches an
  empty set.

``and``/``or`` short-circuit as in xapi, so a field is only looked up when reached.  A field the
record does not have raises :class:`WhereFieldError` at evaluation time, as xapi raises
``DBCache_NotFound ("missing field", name, "")``, which it reports as
``INTERNAL_ERROR ["missing field"; name; ""]``.  xapi's rows are keyed by DB column names, where
namespaced fields use ``__`` (``name__label``, ``memory__static_max``, ``VCPUs__max``,
``HVM__boot_policy``...); records here are keyed by wire names, so a field name is looked up as
given and then with ``__`` replaced by ``_``: both ``field "name__label"`` (xapi's spelling) and
``field "name_label"`` work.  ``field "_ref"`` (xapi's row reference column) is the record's
``"_ref"`` key if present, else the ``ref`` argument of the predicate.

A syntax error raises :class:`WhereSyntaxError` from :func:`compile_where`; xapi reports it as
``INVALID_VALUE [expr; Printexc.to_string exn]`` where ``exn`` is ``Stdlib.Parsing.Parse_error``
or ``Failure("lexing: empty token")``: :attr:`WhereSyntaxError.xapi_params` gives exactly that.

Extensions (not in xapi)
------------------------
Membership.  xapi's grammar has no membership test.  This module adds ``value in field "name"``: true when the
value's string is an element of the set field ``name`` or a key of the map field ``name``
(elements and keys compared by their DB string), e.g. ``"web-server" in field "profiles"``.
The right-hand side must be a field; a field that is not a set or map raises
:class:`WhereFieldTypeError`.  ``in`` is a keyword like the others (``"a"infield"x"`` lexes); no
expression valid in xapi contains it outside a string, so xapi expressions are unaffected.

Numeric comparisons.  ``a < b``, ``a <= b``, ``a > b`` and ``a >= b`` compare numbers, for the
"database-like attributes" of the storage classes, e.g.
``field "virtual_size" > "10737418240" and field "SR" = "OpaqueRef:..."``.  Each side is a field
holding an int or a float (the declared type of an int or float field; bool is not a number) or a
literal that is a decimal integer (any size, compared exactly: int64 bounds and beyond) or decimal
fraction (``"0.5"``, ``"-1.5e3"``; no spaces, ``_``, hex, ``inf`` or ``nan``); either side may
be the field, both may be.  Ints and floats compare by value (Python's exact mixed comparison),
a NaN field compares false.  The literal is converted once, when the expression is compiled.

* A literal that is not a number is a syntax error (:class:`WhereSyntaxError`, reported like
  every other extension syntax error as ``INVALID_VALUE [expr; "Stdlib.Parsing.Parse_error"]``).
* A field whose value is not an int or float (string, enum, bool, datetime, set, map...) raises
  :class:`WhereFieldNotNumericError` (a :class:`WhereFieldTypeError`) when it is reached, with
  ``xapi_params`` ``["field is not a number", name, ""]``.
* A field the record does not have raises :class:`WhereFieldError` when reached, as for ``=``.
* ``<>`` and ``!=`` are not added: ``not a = b`` says it, and they stay xapi's lexing error.
"""
from __future__ import annotations

import operator
import re
from typing import Any, Callable, Iterator, Mapping

__all__ = [
    "WhereSyntaxError", "WhereFieldError", "WhereFieldTypeError", "WhereFieldNotNumericError",
    "compile_where", "parse_where", "parse_number", "db_string", "XAPI_PARSE_ERROR",
    "XAPI_LEX_ERROR",
]

# What xapi's Printexc.to_string says for its two syntax failures (second INVALID_VALUE param).
XAPI_PARSE_ERROR = "Stdlib.Parsing.Parse_error"
XAPI_LEX_ERROR = 'Failure("lexing: empty token")'


class WhereSyntaxError(ValueError):
    """The expression does not parse.  ``str()`` is a human explanation with the offset."""

    def __init__(self, expr: str, offset: int, reason: str, xapi_exn: str = XAPI_PARSE_ERROR):
        self.expr = expr
        self.offset = offset
        self.reason = reason
        self.xapi_exn = xapi_exn
        super().__init__(f"{reason} (at offset {offset})")

    @property
    def xapi_params(self) -> list[str]:
        """xapi's ``INVALID_VALUE`` parameters for this failure: ``[expr, exception]``."""
        return [self.expr, self.xapi_exn]


class WhereFieldError(KeyError):
    """A ``field "name"`` the record does not have (raised at evaluation, as xapi does)."""

    def __init__(self, field: str):
        self.field = field
        super().__init__(field)

    def __str__(self) -> str:
        return f"missing field {self.field!r}: no such field in this class's records"

    @property
    def xapi_params(self) -> list[str]:
        """xapi's ``INTERNAL_ERROR`` parameters: ``["missing field", name, ""]``."""
        return ["missing field", self.field, ""]


class WhereFieldTypeError(WhereFieldError):
    """``in field "name"`` on a field that is neither a set nor a map (extension only)."""

    def __init__(self, field: str, value: Any):
        super().__init__(field)
        self.value_type = type(value).__name__

    def __str__(self) -> str:
        return (f"'in' needs a set or map field, but field {self.field!r} holds a "
                f"{self.value_type}; compare it with '=' instead")

    @property
    def xapi_params(self) -> list[str]:
        return ["field is not a set or map", self.field, ""]


class WhereFieldNotNumericError(WhereFieldTypeError):
    """``<``, ``<=``, ``>`` or ``>=`` on a field that holds no int or float (extension only)."""

    def __init__(self, field: str, value: Any, op: str):
        super().__init__(field, value)
        self.op = op

    def __str__(self) -> str:
        return (f"{self.op!r} compares numbers, but field {self.field!r} holds a "
                f"{self.value_type}, not an int or float; compare it with '=' instead")

    @property
    def xapi_params(self) -> list[str]:
        return ["field is not a number", self.field, ""]


# --- the DB string form ------------------------------------------------------------------------

def _sexpr_escape(s: str) -> str:
    # SExpr.escape: backslash, double and single quote get a backslash.
    if "\\" in s or '"' in s or "'" in s:
        return s.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")
    return s


def _atom(value: Any) -> str:
    return "'" + _sexpr_escape(db_string(value)) + "'"


def _set_string(values) -> str:
    return "(" + " ".join(_atom(v) for v in values) + ")"


def _unordered_set_string(values) -> str:
    # A Python set has no order; xapi keeps insertion order.  Sort so the form is stable.
    return "(" + " ".join(sorted(_atom(v) for v in values)) + ")"


def _map_string(m) -> str:
    return "(" + " ".join(f"({_atom(k)} {_atom(v)})" for k, v in m.items()) + ")"


def _float_string(x: float) -> str:
    return "%.18g" % x


_BY_TYPE: dict[type, Callable[[Any], str]] = {
    str: lambda s: s,
    bool: lambda b: "true" if b else "false",
    int: str,
    float: _float_string,
    list: _set_string,
    tuple: _set_string,
    set: _unordered_set_string,
    frozenset: _unordered_set_string,
    dict: _map_string,
}


def db_string(value: Any) -> str:
    """The string xapi's database holds for a field value (``Schema.Value.marshal`` of it)."""
    f = _BY_TYPE.get(type(value))
    if f is not None:
        return f(value)
    wire = getattr(value, "wire", None)
    if callable(wire):
        return wire()
    # Subclasses (str/int enums, I4, OrderedDict...): bool before int, as bool is an int.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return _float_string(float(value))
    if isinstance(value, (list, tuple)):
        return _set_string(value)
    if isinstance(value, (set, frozenset)):
        return _unordered_set_string(value)
    if isinstance(value, Mapping):
        return _map_string(value)
    raise TypeError(f"no xapi DB string form for a {type(value).__name__} value: {value!r}")


# --- numbers (the comparison extension) ---------------------------------------------------------

# A literal a comparison accepts: an optionally signed decimal integer (any size: int64 and beyond
# compare exactly) or decimal fraction with an optional exponent.  No spaces, "_", hex, inf or nan.
_INTEGER = re.compile(r"[+-]?[0-9]+\Z")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_BARE_INTEGER = re.compile(r"[+-]?[0-9]+")


def parse_number(text: str) -> int | float | None:
    """The number a comparison's literal denotes (an int if it is an integer), else ``None``."""
    if _INTEGER.match(text):
        return int(text)
    if _DECIMAL.match(text):
        return float(text)
    return None


# --- lexer -------------------------------------------------------------------------------------

_WS = " \t\n"
_KEYWORDS = (("true", "TRUE"), ("false", "FALSE"), ("field", "FIELD"), ("and", "AND"),
             ("or", "OR"), ("not", "NOT"), ("in", "IN"))
_SINGLE = {"=": "EQ", "(": "LPAREN", ")": "RPAREN"}
_COMPARE = {"<": "LT", "<=": "LE", ">": "GT", ">=": "GE"}          # EXTENSION
_COMPARE_KINDS = frozenset(_COMPARE.values())

_Token = tuple  # (kind, text, offset)


def _lex_hint(expr: str, i: int) -> str:
    c = expr[i]
    if c == "\r":
        return "carriage return is not whitespace in xapi's lexer (use spaces, tabs or LF)"
    if expr.startswith(("<>", "!="), i):
        return f"{expr[i:i + 2]!r} is not an operator: write not (a = b)"
    if c == "'":
        return "literals use double quotes: \"...\""
    if c.isdigit() or c == "-":
        return "numbers are not values: quote them, e.g. \"42\" (compared as strings)"
    if c.isalpha() or c == "_":
        j = i
        while j < len(expr) and (expr[j].isalnum() or expr[j] in "_-"):
            j += 1
        word = expr[i:j]
        if word.lower() in {k for k, _ in _KEYWORDS}:
            return f"keywords are lower case: {word.lower()!r}, not {word!r}"
        return (f"bare word {word!r}: quote literals (\"{word}\") and write fields as "
                f"field \"{word}\"")
    return (f"unexpected character {c!r}; tokens are field, \"...\", =, in, and, or, not, "
            f"true, false, ( and )")


def _tokens(expr: str) -> Iterator[_Token]:
    """Lazily, like ocamllex feeding ocamlyacc: a lexing error surfaces only when reached."""
    i, n = 0, len(expr)
    after_compare = False
    while True:
        while i < n and expr[i] in _WS:
            i += 1
        if i >= n:
            yield ("EOF", "", n)
            return
        c = expr[i]
        kind = _SINGLE.get(c)
        if kind is not None:
            after_compare = False
            yield (kind, c, i)
            i += 1
            continue
        if c in "<>":
            # EXTENSION.  "<>" stays the lexing error it is in xapi (it is no operator here either).
            if expr.startswith("<>", i):
                raise WhereSyntaxError(expr, i, _lex_hint(expr, i), XAPI_LEX_ERROR)
            op = expr[i:i + 2] if expr.startswith("=", i + 1) else c
            after_compare = True
            yield (_COMPARE[op], op, i)
            i += len(op)
            continue
        if after_compare:
            # EXTENSION: right after a comparison (and only there) an integer may go unquoted.
            after_compare = False
            m = _BARE_INTEGER.match(expr, i)
            if m:
                j = m.end()
                if j < n and (expr[j] in "._eE" or expr[j].isdigit()):
                    raise WhereSyntaxError(
                        expr, i, "only integers may be written without quotes: quote the "
                                 "number, e.g. \"10.5\"", XAPI_LEX_ERROR)
                yield ("NUMBER", m.group(), i)
                i = j
                continue
        if c == '"':
            j = expr.find('"', i + 1)
            if j < 0:
                raise WhereSyntaxError(
                    expr, i, "unterminated string literal (literals are \"...\" with no escapes, "
                             "so they cannot contain a double quote)", XAPI_LEX_ERROR)
            yield ("STRING", expr[i + 1:j], i)
            i = j + 1
            continue
        for word, kind in _KEYWORDS:
            if expr.startswith(word, i):
                yield (kind, word, i)
                i += len(word)
                break
        else:
            raise WhereSyntaxError(expr, i, _lex_hint(expr, i), XAPI_LEX_ERROR)


# --- parser (recursive descent equivalent to xapi's LALR grammar + precedences) -----------------

def _describe(tok: _Token) -> str:
    kind, text, _ = tok
    if kind == "EOF":
        return "end of input"
    if kind == "STRING":
        return f'literal "{text}"'
    return repr(text)


MAX_NESTING = 100    # parentheses and `not`s inside each other; chains of and/or may be any length


class _Parser:
    def __init__(self, expr: str):
        self.expr = expr
        self._it = _tokens(expr)
        self._tok: _Token | None = None
        self._depth = 0

    def _nested(self, tok: _Token, inner: Callable[[], Any]):
        """Parse ``inner`` one level deeper: the parser, the compiler and the predicate recurse
        per level, so nesting is bounded (a syntax error) rather than left to Python's stack."""
        if self._depth >= MAX_NESTING:
            self.fail(tok, f"nested more than {MAX_NESTING} levels deep (parentheses and not)")
        self._depth += 1
        try:
            return inner()
        finally:
            self._depth -= 1

    def peek(self) -> _Token:
        if self._tok is None:
            self._tok = next(self._it)
        return self._tok

    def take(self) -> _Token:
        tok = self.peek()
        self._tok = None
        return tok

    def fail(self, tok: _Token, reason: str):
        raise WhereSyntaxError(self.expr, tok[2], reason)

    def parse(self):
        if self.peek()[0] == "EOF":
            self.fail(self.peek(), "empty expression (use true to match every record)")
        node = self.expr_()
        tok = self.peek()
        if tok[0] != "EOF":
            if tok[0] == "RPAREN":
                self.fail(tok, "unbalanced ')': no '(' to close")
            if tok[0] == "EQ":
                self.fail(tok, "'=' compares two values only: a = b = c is not allowed")
            if tok[0] in _COMPARE_KINDS:
                self.fail(tok, f"{tok[1]!r} compares two values only: join comparisons with "
                               f"and / or (a < b and b < c)")
            self.fail(tok, f"unexpected {_describe(tok)} after a complete expression "
                           f"(join expressions with and / or)")
        return node

    def expr_(self):
        if self.peek()[0] == "NOT":
            tok = self.take()
            return ("not", self._nested(tok, self.expr_))
        return self.chain()

    def chain(self):
        left = self.atom()
        while self.peek()[0] in ("AND", "OR"):
            op = self.take()[0].lower()
            if self.peek()[0] == "NOT":
                tok = self.take()
                right = ("not", self._nested(tok, self.expr_))
            else:
                right = self.atom()
            left = (op, left, right)
        return left

    def atom(self):
        tok = self.peek()
        kind = tok[0]
        if kind == "TRUE":
            self.take()
            return ("true",)
        if kind == "FALSE":
            self.take()
            return ("false",)
        if kind == "LPAREN":
            self.take()
            if self.peek()[0] == "RPAREN":
                self.fail(self.peek(), "empty parentheses: expected an expression")
            node = self._nested(tok, self.expr_)
            close = self.peek()
            if close[0] != "RPAREN":
                self.fail(close, f"expected ')' to close the '(' at offset {tok[2]}, "
                                 f"found {_describe(close)}")
            self.take()
            return node
        if kind in ("STRING", "FIELD"):
            left = self.value()
            op = self.peek()
            if op[0] == "EQ":
                self.take()
                right = self.peek()
                if right[0] in ("TRUE", "FALSE"):
                    self.fail(right, f"{right[1]} is an expression, not a value: "
                                     f"compare with the string \"{right[1]}\"")
                if right[0] in _COMPARE_KINDS and right[2] == op[2] + 1 and len(right[1]) == 1:
                    self.fail(op, f"'={right[1]}' is not an operator: write {right[1]}=")
                return ("eq", left, self.value())
            if op[0] == "IN":
                self.take()
                rhs = self.peek()
                if rhs[0] != "FIELD":
                    self.fail(rhs, f"'in' needs a set or map field on its right "
                                   f"(in field \"name\"), found {_describe(rhs)}")
                return ("in", left, self.value())
            if op[0] in _COMPARE_KINDS:
                self.take()
                rhs = self.peek()
                if rhs[0] in ("TRUE", "FALSE"):
                    self.fail(rhs, f"{op[1]!r} compares numbers: {rhs[1]} is not one")
                right = self.value()
                self._numeric(tok, left, op)
                self._numeric(rhs, right, op)
                return (_CMP_NODE[op[0]], left, right)
            self.fail(op, f"expected '=' after {_value_text(left)}, found {_describe(op)}")
        if kind == "EOF":
            self.fail(tok, "expression ends too early: expected true, false, '(', "
                           "\"literal\" or field \"name\"")
        self.fail(tok, f"expected true, false, '(', \"literal\" or field \"name\", "
                       f"found {_describe(tok)}")

    def _numeric(self, tok: _Token, v, op: _Token) -> None:
        if v[0] == "lit" and parse_number(v[1]) is None:
            self.fail(tok, f"{op[1]!r} compares numbers, but \"{v[1]}\" is not a number: write "
                           f"an integer (\"10737418240\", \"-1\") or a decimal (\"0.5\", "
                           f"\"1e9\"); compare strings with '='")

    def value(self):
        tok = self.peek()
        if tok[0] in ("STRING", "NUMBER"):      # NUMBER: only ever lexed after a comparison
            self.take()
            return ("lit", tok[1])
        if tok[0] == "FIELD":
            self.take()
            name = self.peek()
            if name[0] != "STRING":
                self.fail(name, f"expected the field's name in double quotes after 'field', "
                                f"found {_describe(name)}")
            self.take()
            return ("field", name[1])
        self.fail(tok, f"expected a value (\"literal\" or field \"name\"), found {_describe(tok)}")


_CMP_NODE = {"LT": "lt", "LE": "le", "GT": "gt", "GE": "ge"}


def _value_text(v) -> str:
    return f'field "{v[1]}"' if v[0] == "field" else f'"{v[1]}"'


# --- compilation to closures --------------------------------------------------------------------

_MISSING = object()


def _getter(name: str) -> Callable[[Mapping[str, Any], Any], Any]:
    alt = name.replace("__", "_") if "__" in name else None
    is_ref = name == "_ref"

    def get(rec, ref):
        try:
            return rec[name]
        except KeyError:
            pass
        if alt is not None:
            v = rec.get(alt, _MISSING)
            if v is not _MISSING:
                return v
        if is_ref and ref is not None:
            return ref
        raise WhereFieldError(name)

    return get


def _string_of(v) -> Callable:
    """A closure giving the DB string of a value node for a record."""
    if v[0] == "lit":
        s = v[1]
        return lambda rec, ref: s
    get = _getter(v[1])

    def field_string(rec, ref):
        x = get(rec, ref)
        return x if type(x) is str else db_string(x)

    return field_string


_CMP_FN = {"lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge}
_CMP_TEXT = {"lt": "<", "le": "<=", "gt": ">", "ge": ">="}
_CMP_FLIP = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le"}     # a < b  is  b > a


def _as_number(x, name: str, op: str):
    """``x`` if it is an int or float field's value (bool is not), else the type error."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return x
    raise WhereFieldNotNumericError(name, x, op)


def _number_of(v, op: str) -> Callable:
    """A closure giving the number of a field node for a record (type-checked)."""
    get, name = _getter(v[1]), v[1]

    def number(rec, ref):
        x = get(rec, ref)
        t = type(x)
        return x if t is int or t is float else _as_number(x, name, op)

    return number


def _compile_compare(kind: str, left, right) -> Callable:
    if left[0] == "lit" and right[0] == "lit":
        return _true if _CMP_FN[kind](parse_number(left[1]), parse_number(right[1])) else _false
    if left[0] == "lit":                         # "n" < field "x"  is  field "x" > "n"
        kind, left, right = _CMP_FLIP[kind], right, left
    cmp, op = _CMP_FN[kind], _CMP_TEXT[kind]
    if right[0] == "lit":
        n = parse_number(right[1])               # once, here: never per record
        get, name = _getter(left[1]), left[1]

        def compare_literal(rec, ref):
            x = get(rec, ref)
            t = type(x)
            return cmp(x if t is int or t is float else _as_number(x, name, op), n)

        return compare_literal
    lhs, rhs = _number_of(left, op), _number_of(right, op)

    def compare_fields(rec, ref):              # the right field first, as '=' reads them
        r = rhs(rec, ref)
        return cmp(lhs(rec, ref), r)

    return compare_fields


def _true(rec, ref):
    return True


def _false(rec, ref):
    return False


def _compile(node) -> Callable:
    kind = node[0]
    if kind == "true":
        return _true
    if kind == "false":
        return _false
    if kind == "not":
        inner = _compile(node[1])
        if inner is _true:
            return _false
        if inner is _false:
            return _true
        return lambda rec, ref: not inner(rec, ref)
    if kind in ("and", "or"):
        return _compile_chain(node)
    if kind == "eq":
        left, right = node[1], node[2]
        if left[0] == "lit" and right[0] == "lit":
            return _true if left[1] == right[1] else _false
        if right[0] == "lit":
            get, s = _getter(left[1]), right[1]
        elif left[0] == "lit":
            get, s = _getter(right[1]), left[1]
        else:
            # OCaml evaluates application arguments right to left: the right field is read first.
            lhs, rhs = _string_of(left), _string_of(right)

            def eq_fields(rec, ref):
                r = rhs(rec, ref)
                return lhs(rec, ref) == r

            return eq_fields

        def eq_literal(rec, ref):
            x = get(rec, ref)
            return (x if type(x) is str else db_string(x)) == s

        return eq_literal
    if kind in _CMP_FN:
        return _compile_compare(kind, node[1], node[2])
    if kind == "in":
        needle_of = _string_of(node[1])
        name = node[2][1]
        get = _getter(name)

        def member(rec, ref):
            coll = get(rec, ref)
            needle = needle_of(rec, ref)
            if isinstance(coll, (list, tuple, set, frozenset, Mapping)):
                try:
                    if needle in coll:       # the common case: string elements / keys
                        return True
                except TypeError:
                    pass
                return any(type(x) is not str and db_string(x) == needle for x in coll)
            raise WhereFieldTypeError(name, coll)

        return member
    raise AssertionError(f"unknown node {node!r}")  # pragma: no cover


def _spine(node) -> tuple[Any, list[tuple[str, Any]]]:
    """A left-deep chain ``((a op b) op c) ...`` as its first operand and the (op, operand) pairs
    after it, walked without recursion: a chain may be thousands of terms long."""
    steps = []
    while node[0] in ("and", "or"):
        steps.append((node[0], node[2]))
        node = node[1]
    steps.reverse()
    return node, steps


def _compile_chain(node) -> Callable:
    first, steps = _spine(node)
    head = _compile(first)
    rest = [(op == "and", _compile(operand)) for op, operand in steps]

    def chain(rec, ref):            # left to right, short-circuiting as nested and/or would
        value = head(rec, ref)
        for is_and, operand in rest:
            if bool(value) != is_and:
                continue            # true or ..., false and ...: decided already
            value = operand(rec, ref)
        return value

    return chain


def _fields_of(node, out: list[str]) -> None:
    kind = node[0]
    if kind in ("not",):
        _fields_of(node[1], out)
    elif kind in ("and", "or"):
        first, steps = _spine(node)
        for operand in [first, *(operand for _, operand in steps)]:
            _fields_of(operand, out)
    elif kind in ("eq", "in", "lt", "le", "gt", "ge"):
        for v in node[1:]:
            if v[0] == "field" and v[1] not in out:
                out.append(v[1])


def parse_where(expr: str):
    """The expression's syntax tree (nested tuples); raises :class:`WhereSyntaxError`."""
    if not isinstance(expr, str):
        raise TypeError(f"expression must be a string, not {type(expr).__name__}")
    return _Parser(expr).parse()


def compile_where(expr: str) -> Callable[..., bool]:
    """Parse ``expr`` once and return ``predicate(record, ref=None) -> bool``.

    ``record`` maps field wire names to Python values; ``ref`` (optional) is the record's
    reference, used for ``field "_ref"``.  The predicate raises :class:`WhereFieldError` when it
    reaches a field the record lacks.  It has attributes ``expr``, ``tree`` and ``fields`` (the
    field names the expression mentions, in order).
    """
    tree = parse_where(expr)
    fn = _compile(tree)

    def predicate(record: Mapping[str, Any], ref: str | None = None) -> bool:
        return fn(record, ref)

    fields: list[str] = []
    _fields_of(tree, fields)
    predicate.expr = expr
    predicate.tree = tree
    predicate.fields = tuple(fields)
    return predicate
