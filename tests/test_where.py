"""xapi's get_all_records_where expression language (xenapi.where).

Expected behaviour is xapi's: ocaml/database/db_filter_{lex.mll,parse.mly}, db_filter.ml,
Db_cache_impl.find_refs_with_filter_internal, Schema.Value.marshal and SExpr.string_of.
"""
from __future__ import annotations

import pytest

from xenapi.where import (
    XAPI_LEX_ERROR, XAPI_PARSE_ERROR, WhereFieldError, WhereFieldTypeError, WhereSyntaxError,
    compile_where, db_string, parse_where,
)
from xenapi.wire.values import DateTime

VM = {
    "uuid": "0b7c3f5e-0000-4000-8000-000000000001",
    "name_label": "web01",
    "name_description": "",
    "power_state": "Running",
    "is_a_template": False,
    "is_control_domain": False,
    "memory_static_max": 2147483648,
    "VCPUs_max": 2,
    "HVM_shadow_multiplier": 1.0,
    "resident_on": "OpaqueRef:host-1",
    "tags": ["prod", "eu"],
    "profiles": ["web-server", "monitoring"],
    "other_config": {"owner": "ops", "tier": "1"},
    "blocked_operations": {},
    "VBDs": [],
    "start_time": DateTime(0.0),
}


def matches(expr: str, record=VM, ref=None) -> bool:
    return compile_where(expr)(record, ref)


# --- the tree: precedence and associativity (xapi: %right LNOT then %left LAND LOR) ---------

T, F = ("true",), ("false",)


def eq(a, b):
    return ("eq", ("lit", a), ("lit", b))


@pytest.mark.parametrize("expr, tree", [
    ("true", T),
    ("false", F),
    ('"a"="b"', eq("a", "b")),
    ('field "x" = "1"', ("eq", ("field", "x"), ("lit", "1"))),
    ('"1" = field "x"', ("eq", ("lit", "1"), ("field", "x"))),
    ('field "x" = field "y"', ("eq", ("field", "x"), ("field", "y"))),
    # and / or: one precedence level, left-associative
    ("true or false and false", ("and", ("or", T, F), F)),
    ("false and false or true", ("or", ("and", F, F), T)),
    ("true and false and true", ("and", ("and", T, F), T)),
    ("true or false or true", ("or", ("or", T, F), T)),
    # not: the loosest binding, it swallows everything to its right
    ("not true and false", ("not", ("and", T, F))),
    ("not true or true", ("not", ("or", T, T))),
    ("true and not false or true", ("and", T, ("not", ("or", F, T)))),
    ("not not true", ("not", ("not", T))),
    # parentheses
    ("(not true) and false", ("and", ("not", T), F)),
    ("true or (false and false)", ("or", T, ("and", F, F))),
    ("not (true) or false", ("not", ("or", T, F))),
    ("((true))", T),
    ("true and (not false) or true", ("or", ("and", T, ("not", F)), T)),
])
def test_tree(expr, tree):
    assert parse_where(expr) == tree


def test_precedence_changes_results():
    # xapi reads these as (true or false) and false, and not (false and false)
    assert matches("true or false and false") is False
    assert matches("not false and false") is True
    assert matches("(not false) and false") is False


@pytest.mark.parametrize("expr", [
    "nottrue",                      # ocamllex: keywords are prefixes, no word boundary needed
    'field"power_state"="Running"and"a"="a"',
    "\ttrue\n",
    'true or\n\tfalse',
])
def test_lexing_without_separators_and_whitespace(expr):
    assert isinstance(parse_where(expr), tuple)


def test_literals_are_taken_verbatim():
    # no escapes: a backslash is an ordinary character, newlines are allowed
    assert parse_where('"a\\b"="x\ny"') == eq("a\\b", "x\ny")
    assert parse_where('""=""') == eq("", "")
    assert parse_where('"and (or) not"="="') == eq("and (or) not", "=")


# --- syntax errors --------------------------------------------------------------------------

@pytest.mark.parametrize("expr, exn", [
    ("", XAPI_PARSE_ERROR),                           # empty: xapi's grammar needs an expr
    ("   \n", XAPI_PARSE_ERROR),
    ("(true", XAPI_PARSE_ERROR),                      # unbalanced
    ("true)", XAPI_PARSE_ERROR),
    ("((true)", XAPI_PARSE_ERROR),
    ("()", XAPI_PARSE_ERROR),
    ("true true", XAPI_PARSE_ERROR),                  # trailing junk
    ('true "x"', XAPI_PARSE_ERROR),
    ('"a"="b" "c"', XAPI_PARSE_ERROR),
    ('"a"="b"="c"', XAPI_PARSE_ERROR),
    ("true and", XAPI_PARSE_ERROR),
    ("and true", XAPI_PARSE_ERROR),
    ("not", XAPI_PARSE_ERROR),
    ('"a"', XAPI_PARSE_ERROR),                        # a value is not an expression
    ('field "a"', XAPI_PARSE_ERROR),
    ('field "x"=true', XAPI_PARSE_ERROR),             # true is not a value
    ('field "x"=false', XAPI_PARSE_ERROR),
    ('field = "x"', XAPI_PARSE_ERROR),
    ('(field "x")="1"', XAPI_PARSE_ERROR),
    ('"abc', XAPI_LEX_ERROR),                         # unterminated string
    ('field "x" = "abc', XAPI_LEX_ERROR),
    ('"a\\"b"="c"', XAPI_LEX_ERROR),                  # no escapes: \" ends the string, then b
    ("'a'='a'", XAPI_LEX_ERROR),                      # single quotes
    ('name_label="x"', XAPI_LEX_ERROR),               # bare identifiers
    ('field "x"=42', XAPI_LEX_ERROR),                 # bare numbers
    ('field "x"<>"1"', XAPI_LEX_ERROR),               # no <>
    ('field "x"!="1"', XAPI_LEX_ERROR),
    ("TRUE", XAPI_LEX_ERROR),                         # case-sensitive keywords
    ("true && false", XAPI_LEX_ERROR),
    ("true\r\n", XAPI_LEX_ERROR),                     # CR is not whitespace for xapi
    ("truex", XAPI_LEX_ERROR),
])
def test_syntax_errors(expr, exn):
    with pytest.raises(WhereSyntaxError) as info:
        compile_where(expr)
    err = info.value
    assert err.xapi_exn == exn
    assert err.xapi_params == [expr, exn]
    assert err.expr == expr
    assert 0 <= err.offset <= len(expr)
    assert isinstance(err, ValueError)
    assert str(err)


def test_errors_surface_in_token_order():
    # the lexer is pulled by the parser, so whichever problem comes first is reported
    with pytest.raises(WhereSyntaxError) as info:
        compile_where("true true $")
    assert info.value.xapi_exn == XAPI_PARSE_ERROR and info.value.offset == 5
    with pytest.raises(WhereSyntaxError) as info:
        compile_where("true and $")
    assert info.value.xapi_exn == XAPI_LEX_ERROR and info.value.offset == 9


@pytest.mark.parametrize("expr, offset, words", [
    ('"abc', 0, "unterminated"),
    ("(true", 5, "')'"),
    ("true)", 4, "unbalanced"),
    ('name_label="x"', 0, 'field "name_label"'),
    ('field "x"=true', 10, '"true"'),
    ('field "x"<>"1"', 9, "not (a = b)"),
    ("", 0, "empty"),
    ("TRUE", 0, "lower case"),
])
def test_error_messages_help(expr, offset, words):
    with pytest.raises(WhereSyntaxError) as info:
        compile_where(expr)
    assert info.value.offset == offset
    assert words in str(info.value)


def test_non_string_expression_is_a_type_error():
    with pytest.raises(TypeError):
        compile_where(None)  # type: ignore[arg-type]


# --- evaluation: string comparison of the DB form -----------------------------------------------

@pytest.mark.parametrize("expr, expected", [
    ("true", True),
    ("false", False),
    ('field "name_label"="web01"', True),
    ('"web01"=field "name_label"', True),
    ('field "name_label"="WEB01"', False),               # case-sensitive string equality
    ('field "name_label"=" web01"', False),
    ('field "name_description"=""', True),
    ('field "power_state"="Running"', True),
    ('field "power_state"="running"', False),            # enums: the stored spelling
    ('field "resident_on"="OpaqueRef:host-1"', True),
    # bools and ints are compared as their DB strings
    ('field "is_a_template"="false"', True),
    ('field "is_a_template"="False"', False),
    ('field "is_a_template"="0"', False),
    ('field "memory_static_max"="2147483648"', True),
    ('field "VCPUs_max"="2"', True),
    ('field "VCPUs_max"="02"', False),
    ('field "HVM_shadow_multiplier"="1"', True),         # %.18g
    ('field "HVM_shadow_multiplier"="1.0"', False),
    ('field "start_time"="19700101T00:00:00Z"', True),
    # sets and maps: xapi's s-expression strings, whole value only
    ('field "tags"="(\'prod\' \'eu\')"', True),
    ('field "tags"="(\'eu\' \'prod\')"', False),          # order matters
    ('field "tags"="prod"', False),
    ('field "VBDs"="()"', True),
    ('field "blocked_operations"="()"', True),
    ('field "other_config"="((\'owner\' \'ops\') (\'tier\' \'1\'))"', True),
    # literal = literal needs no record field
    ('"a"="a"', True),
    ('"a"="b"', False),
    # field = field
    ('field "name_label"=field "name_label"', True),
    ('field "is_a_template"=field "is_control_domain"', True),
    ('field "name_label"=field "power_state"', False),
    # combinations
    ('field "is_a_template"="false" and field "power_state"="Running"', True),
    ('field "is_a_template"="true" or field "power_state"="Halted"', False),
    ('not field "power_state"="Halted"', True),
    ('not field "power_state"="Halted" and field "name_label"="x"', True),   # not (a and b)
    ('(not field "power_state"="Halted") and field "name_label"="x"', False),
])
def test_evaluation(expr, expected):
    assert matches(expr) is expected


def test_xapi_db_column_names_resolve_to_wire_names():
    # xapi's columns are namespaced with "__" (name__label, memory__static_max, VCPUs__max,
    # HVM__shadow_multiplier); records here are keyed by wire names.
    assert matches('field "name__label"="web01"')
    assert matches('field "memory__static_max"="2147483648"')
    assert matches('field "VCPUs__max"="2"')
    assert matches('field "HVM__shadow_multiplier"="1"')


def test_ref_column():
    assert matches('field "_ref"="OpaqueRef:vm-1"', ref="OpaqueRef:vm-1")
    assert not matches('field "_ref"="OpaqueRef:vm-2"', ref="OpaqueRef:vm-1")
    assert matches('field "_ref"="OpaqueRef:in-record"', {**VM, "_ref": "OpaqueRef:in-record"})
    with pytest.raises(WhereFieldError):
        matches('field "_ref"="x"')


# --- unknown fields: xapi raises DBCache_NotFound("missing field", name, "") -------------------

def test_unknown_field_raises_at_evaluation():
    pred = compile_where('field "no_such_field"="x"')      # compiles fine
    with pytest.raises(WhereFieldError) as info:
        pred(VM)
    err = info.value
    assert isinstance(err, KeyError)
    assert err.field == "no_such_field"
    assert err.xapi_params == ["missing field", "no_such_field", ""]
    assert "no_such_field" in str(err)


def test_unknown_field_not_reached_is_not_an_error():
    # and/or short-circuit as in xapi's eval_expr
    assert matches('false and field "no_such_field"="x"') is False
    assert matches('true or field "no_such_field"="x"') is True
    with pytest.raises(WhereFieldError):
        matches('true and field "no_such_field"="x"')
    with pytest.raises(WhereFieldError):
        matches('not field "no_such_field"="x"')


def test_field_equals_field_reads_the_right_field_first():
    # OCaml evaluates (lookup a) (lookup b) right to left: the right-hand missing field is named
    with pytest.raises(WhereFieldError) as info:
        matches('field "missing_left"=field "missing_right"')
    assert info.value.field == "missing_right"


# --- compile once, apply many -----------------------------------------------------------------

def test_predicate_is_reusable():
    pred = compile_where('field "power_state"="Running" and not field "is_a_template"="true"')
    records = [
        {"power_state": "Running", "is_a_template": False},
        {"power_state": "Halted", "is_a_template": False},
        {"power_state": "Running", "is_a_template": True},
    ] * 100
    assert [pred(r) for r in records] == [True, False, False] * 100
    assert pred.fields == ("power_state", "is_a_template")
    assert pred.expr.startswith("field")


# --- db_string ------------------------------------------------------------------------------

class _WireThing:
    def wire(self):
        return "20250319T04:16:24Z"


@pytest.mark.parametrize("value, text", [
    ("abc", "abc"),
    ("", ""),
    ("OpaqueRef:NULL", "OpaqueRef:NULL"),
    (True, "true"),
    (False, "false"),
    (0, "0"),
    (-5, "-5"),
    (9223372036854775807, "9223372036854775807"),
    (1.0, "1"),
    (0.5, "0.5"),
    (0.1, "0.100000000000000006"),
    (-2.25, "-2.25"),
    (1e20, "1e+20"),
    (123456789.125, "123456789.125"),
    (DateTime(1742357784.0), "20250319T04:16:24Z"),
    (_WireThing(), "20250319T04:16:24Z"),
    ([], "()"),
    (["a"], "('a')"),
    (["a", "b"], "('a' 'b')"),
    (("a", "b"), "('a' 'b')"),
    (["a b", ""], "('a b' '')"),
    ([1, True, 0.5], "('1' 'true' '0.5')"),
    (["it's", 'say "hi"', "back\\slash"], "('it\\'s' 'say \\\"hi\\\"' 'back\\\\slash')"),
    ({}, "()"),
    ({"k": "v"}, "(('k' 'v'))"),
    ({"k1": "v1", "k2": "v2"}, "(('k1' 'v1') ('k2' 'v2'))"),
    ({"a'": "b"}, "(('a\\'' 'b'))"),
    ({1: 0.25}, "(('1' '0.25'))"),
    ({"b", "a"}, "('a' 'b')"),                 # a Python set: sorted for a stable form
    (frozenset({"z"}), "('z')"),
])
def test_db_string(value, text):
    assert db_string(value) == text


def test_db_string_subclasses():
    import enum

    class Colour(str, enum.Enum):
        RED = "red"

    class Level(enum.IntEnum):
        HIGH = 3

    assert db_string(Colour.RED) == "red"
    assert db_string(Level.HIGH) == "3"


def test_db_string_rejects_unknown_types():
    with pytest.raises(TypeError):
        db_string(None)
    with pytest.raises(TypeError):
        db_string(object())


def test_escaped_set_elements_compare_as_stored():
    rec = {"tags": ["it's"]}
    assert matches("field \"tags\"=\"('it\\'s')\"", rec)


# --- the `in` extension -----------------------------------------------------------------------

@pytest.mark.parametrize("expr, expected", [
    ('"web-server" in field "profiles"', True),
    ('"monitoring" in field "profiles"', True),
    ('"db-server" in field "profiles"', False),
    ('"web" in field "profiles"', False),                  # whole elements only
    ('"prod" in field "tags"', True),
    ('"owner" in field "other_config"', True),             # map: keys
    ('"ops" in field "other_config"', False),              # not values
    ('"x" in field "VBDs"', False),                        # empty set
    ('field "name_label" in field "name_label"', None),    # scalar field: error
    ('not "db-server" in field "profiles"', True),
    ('"web-server" in field "profiles" and field "power_state"="Running"', True),
    ('"db-server" in field "profiles" or "eu" in field "tags"', True),
    ('"a"infield"profiles"', False),                       # keyword lexing, as xapi's
])
def test_in_extension(expr, expected):
    if expected is None:
        with pytest.raises(WhereFieldTypeError) as info:
            matches(expr)
        assert isinstance(info.value, WhereFieldError)
        assert "set or map" in str(info.value)
    else:
        assert matches(expr) is expected


def test_in_compares_db_strings_of_non_string_elements():
    rec = {"ids": [1, 2], "flags": [True], "weights": {3: 0.5}}
    assert matches('"2" in field "ids"', rec)
    assert matches('"true" in field "flags"', rec)
    assert matches('"3" in field "weights"', rec)
    assert not matches('"0.5" in field "weights"', rec)


def test_in_with_a_field_on_the_left():
    rec = {"name_label": "web-server", "profiles": ["web-server"]}
    assert matches('field "name_label" in field "profiles"', rec)


def test_in_unknown_field():
    with pytest.raises(WhereFieldError) as info:
        matches('"x" in field "nope"')
    assert info.value.field == "nope"


@pytest.mark.parametrize("expr", [
    '"a" in "b"',                   # right side must be a field
    'in field "profiles"',
    '"a" in',
    '"a" in field',
    'field "profiles" in',
])
def test_in_syntax_errors(expr):
    with pytest.raises(WhereSyntaxError):
        compile_where(expr)
