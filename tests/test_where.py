"""xapi's get_all_records_where expression language (xenapi.state.where).

Expected behaviour is xapi's: ocaml/database/db_filter_{lex.mll,parse.mly}, db_filter.ml,
Db_cache_impl.find_refs_with_filter_internal, Schema.Value.marshal and SExpr.string_of.
"""
from __future__ import annotations

import pytest

from xenapi.state.where import (
    XAPI_LEX_ERROR, XAPI_PARSE_ERROR, WhereFieldError, WhereFieldNotNumericError,
    WhereFieldTypeError, WhereSyntaxError, compile_where, db_string, parse_number, parse_where,
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


# --- the numeric comparison extension: <, <=, >, >= ------------------------------------------

def fld(name):
    return ("field", name)


def lit(text):
    return ("lit", text)


@pytest.mark.parametrize("expr, tree", [
    ('field "VCPUs_max" < "4"', ("lt", fld("VCPUs_max"), lit("4"))),
    ('field "VCPUs_max" <= "4"', ("le", fld("VCPUs_max"), lit("4"))),
    ('field "VCPUs_max" > "4"', ("gt", fld("VCPUs_max"), lit("4"))),
    ('field "VCPUs_max" >= "4"', ("ge", fld("VCPUs_max"), lit("4"))),
    ('field"VCPUs_max">="4"', ("ge", fld("VCPUs_max"), lit("4"))),
    ('"4" > field "VCPUs_max"', ("gt", lit("4"), fld("VCPUs_max"))),
    ('field "a" < field "b"', ("lt", fld("a"), fld("b"))),
    ('field "VCPUs_max" > 4', ("gt", fld("VCPUs_max"), lit("4"))),          # bare integer
    ('field "VCPUs_max" >= -4', ("ge", fld("VCPUs_max"), lit("-4"))),
    ('field "VCPUs_max" <+4', ("lt", fld("VCPUs_max"), lit("+4"))),
    ('field "x" > 1and true', ("and", ("gt", fld("x"), lit("1")), T)),       # keywords as prefixes
    # a comparison is an atom: and/or/not/parentheses as for =
    ('field "a" > "1" and field "b" = "x"', ("and", ("gt", fld("a"), lit("1")), ("eq", fld("b"), lit("x")))),
    ('not field "a" > "1" or true', ("not", ("or", ("gt", fld("a"), lit("1")), T))),
    ('(field "a" < "1") or (field "a" > "9")', ("or", ("lt", fld("a"), lit("1")), ("gt", fld("a"), lit("9")))),
])
def test_compare_tree(expr, tree):
    assert parse_where(expr) == tree


@pytest.mark.parametrize("expr, expected", [
    # each operator on an int field (VCPUs_max = 2), around and at the boundary
    ('field "VCPUs_max" < "3"', True),
    ('field "VCPUs_max" < "2"', False),
    ('field "VCPUs_max" < "1"', False),
    ('field "VCPUs_max" <= "3"', True),
    ('field "VCPUs_max" <= "2"', True),                   # equal: <= holds
    ('field "VCPUs_max" <= "1"', False),
    ('field "VCPUs_max" > "1"', True),
    ('field "VCPUs_max" > "2"', False),
    ('field "VCPUs_max" > "3"', False),
    ('field "VCPUs_max" >= "1"', True),
    ('field "VCPUs_max" >= "2"', True),                   # equal: >= holds
    ('field "VCPUs_max" >= "3"', False),
    # memory_static_max = 2147483648 (2 GiB): numbers, not strings ("10" < "2147483648" < "9")
    ('field "memory_static_max" > "1073741824"', True),
    ('field "memory_static_max" > "9"', True),
    ('field "memory_static_max" < "10737418240"', True),
    ('field "memory_static_max" >= "2147483648"', True),
    ('field "memory_static_max" > "2147483648"', False),
    ('field "memory_static_max" <= "2147483647"', False),
    ('field "memory__static_max" >= "2147483648"', True),  # xapi's column name works too
    ('field "VCPUs__max" > "1"', True),
    # leading zeros, signs, decimals and exponents in the literal
    ('field "VCPUs_max" >= "02"', True),
    ('field "VCPUs_max" > "+1"', True),
    ('field "VCPUs_max" < "2.5"', True),
    ('field "VCPUs_max" > "1.999"', True),
    ('field "VCPUs_max" <= "2.0"', True),
    ('field "memory_static_max" < "2.2e9"', True),
    ('field "memory_static_max" > "2e9"', True),
    ('field "VCPUs_max" > ".5"', True),
    # a float field (HVM_shadow_multiplier = 1.0)
    ('field "HVM_shadow_multiplier" > "0.5"', True),
    ('field "HVM_shadow_multiplier" >= "1"', True),
    ('field "HVM_shadow_multiplier" <= "1.0"', True),
    ('field "HVM_shadow_multiplier" < "1"', False),
    # the literal on the left reads the same way round as written
    ('"3" > field "VCPUs_max"', True),
    ('"2" >= field "VCPUs_max"', True),
    ('"2" > field "VCPUs_max"', False),
    ('"1" < field "VCPUs_max"', True),
    ('"2" <= field "VCPUs_max"', True),
    # bare integers after the operator
    ('field "VCPUs_max" > 1', True),
    ('field "VCPUs_max" >= 2', True),
    ('field "VCPUs_max" < 2', False),
    ('field "VCPUs_max">-1', True),
    # field against field, literal against literal
    ('field "memory_static_max" > field "VCPUs_max"', True),
    ('field "VCPUs_max" >= field "VCPUs_max"', True),
    ('field "VCPUs_max" > field "HVM_shadow_multiplier"', True),
    ('"10" > "9"', True),                                  # numbers, not strings
    ('"1" >= "1.0"', True),
    ('"-1" > "1"', False),
    # combined with the other atoms, and/or/not and parentheses
    ('field "VCPUs_max" > "1" and field "name_label" = "web01"', True),
    ('field "VCPUs_max" > "1" and field "name_label" = "db01"', False),
    ('field "name_label" = "web01" and field "VCPUs_max" > "4"', False),
    ('field "VCPUs_max" > "4" or field "power_state" = "Running"', True),
    ('field "VCPUs_max" >= "1" and field "VCPUs_max" <= "4"', True),
    ('field "VCPUs_max" < "1" or field "VCPUs_max" > "4"', False),
    ('not field "VCPUs_max" > "4"', True),
    ('not field "VCPUs_max" > "1" and field "name_label" = "x"', True),     # not (a and b)
    ('(not field "VCPUs_max" > "1") and field "name_label" = "x"', False),
    ('"prod" in field "tags" and (field "VCPUs_max" > "8" or field "memory_static_max" >= "2147483648")', True),
    # a comparison's characters inside a string literal are just characters, as in xapi
    ('field "name_label" = "<web01>"', False),
    ('"a<=b" = "a<=b"', True),
])
def test_compare_evaluation(expr, expected):
    assert matches(expr) is expected


def test_compare_is_numeric_where_equality_stays_string():
    # = keeps xapi's string meaning; the comparisons are the numeric ones
    assert matches('field "VCPUs_max" = "02"') is False
    assert matches('field "VCPUs_max" >= "02" and field "VCPUs_max" <= "02"') is True
    assert matches('field "HVM_shadow_multiplier" = "1.0"') is False
    assert matches('field "HVM_shadow_multiplier" >= "1.0" and field "HVM_shadow_multiplier" <= "1.0"') is True


@pytest.mark.parametrize("expr, expected", [
    ('field "n" < "0"', True),
    ('field "n" < "-4"', True),
    ('field "n" < "-5"', False),
    ('field "n" <= "-5"', True),
    ('field "n" > "-6"', True),
    ('field "n" >= "-5"', True),
    ('field "n" > "-5"', False),
    ('field "n" > -6', True),
    ('field "n" <= -5', True),
    ('"-10" < field "n"', True),
    ('field "n" < "-4.5"', True),
    ('field "n" > "-5.5"', True),
    ('field "n" < "-1e1"', False),
])
def test_compare_negative_numbers(expr, expected):
    assert matches(expr, {"n": -5}) is expected


INT64_MAX, INT64_MIN = 2 ** 63 - 1, -2 ** 63


@pytest.mark.parametrize("value, expr, expected", [
    (INT64_MAX, 'field "n" >= "9223372036854775807"', True),
    (INT64_MAX, 'field "n" > "9223372036854775806"', True),
    (INT64_MAX, 'field "n" < "9223372036854775807"', False),
    (INT64_MAX, 'field "n" > 9223372036854775806', True),
    (INT64_MAX - 1, 'field "n" >= "9223372036854775807"', False),
    (INT64_MAX, 'field "n" < "9223372036854775808"', True),       # beyond int64: still exact
    (INT64_MAX, 'field "n" < "99999999999999999999999999"', True),
    (INT64_MAX, 'field "n" < "9.223372036854775807e18"', True),   # that float is 2**63
    (INT64_MIN, 'field "n" <= "-9223372036854775808"', True),
    (INT64_MIN, 'field "n" < "-9223372036854775808"', False),
    (INT64_MIN, 'field "n" > "-9223372036854775809"', True),
    (INT64_MIN, 'field "n" >= -9223372036854775808', True),
    (2 ** 53 + 1, 'field "n" > "9007199254740992"', True),        # no rounding through float
    (2 ** 53 + 1, 'field "n" <= "9007199254740992"', False),
    (10 * 2 ** 40, 'field "n" > "10737418240"', True),            # 10 TiB over 10 GiB
])
def test_compare_huge_int64_values_exactly(value, expr, expected):
    assert matches(expr, {"n": value}) is expected


def test_compare_float_edge_values():
    assert matches('field "f" > "1e308"', {"f": float("inf")})
    assert not matches('field "f" > "0"', {"f": float("nan")})          # NaN compares false
    assert not matches('field "f" <= "0"', {"f": float("nan")})
    assert matches('field "f" > "0.1"', {"f": 0.10000000000000002})
    assert matches('field "f" >= "-0"', {"f": -0.0})


def test_vdi_example_selects_every_vdi_over_10_gib_on_one_sr():
    gib = 2 ** 30
    vdis = {
        "OpaqueRef:big": {"SR": "OpaqueRef:sr-1", "virtual_size": 20 * gib},
        "OpaqueRef:huge": {"SR": "OpaqueRef:sr-1", "virtual_size": 2 ** 62},
        "OpaqueRef:exactly10": {"SR": "OpaqueRef:sr-1", "virtual_size": 10 * gib},
        "OpaqueRef:small": {"SR": "OpaqueRef:sr-1", "virtual_size": gib},
        "OpaqueRef:other-sr": {"SR": "OpaqueRef:sr-2", "virtual_size": 50 * gib},
    }
    pred = compile_where('field "virtual_size" > "10737418240" and field "SR" = "OpaqueRef:sr-1"')
    assert {ref for ref, rec in vdis.items() if pred(rec, ref)} == {"OpaqueRef:big", "OpaqueRef:huge"}
    pred = compile_where('field "virtual_size" >= 10737418240 and field "SR" = "OpaqueRef:sr-1"')
    assert {ref for ref, rec in vdis.items() if pred(rec, ref)} == {
        "OpaqueRef:big", "OpaqueRef:huge", "OpaqueRef:exactly10"}
    assert pred.fields == ("virtual_size", "SR")


@pytest.mark.parametrize("expr, offset", [
    ('field "VCPUs_max" > "abc"', 20),
    ('field "VCPUs_max" > ""', 20),
    ('field "VCPUs_max" > " 1"', 20),
    ('field "VCPUs_max" > "1 "', 20),
    ('field "VCPUs_max" > "0x10"', 20),
    ('field "VCPUs_max" > "1_000"', 20),
    ('field "VCPUs_max" > "1,5"', 20),
    ('field "VCPUs_max" > "inf"', 20),
    ('field "VCPUs_max" > "nan"', 20),
    ('field "VCPUs_max" > "--1"', 20),
    ('field "VCPUs_max" > "1e"', 20),
    ('field "VCPUs_max" > "."', 20),
    ('field "VCPUs_max" > "\u0663"', 20),                           # only ASCII digits
    ('"ten" <= field "VCPUs_max"', 0),
    ('"a" < "1"', 0),
    ('true and (field "VCPUs_max" >= "two")', 31),
])
def test_compare_with_a_non_numeric_literal_is_a_syntax_error(expr, offset):
    with pytest.raises(WhereSyntaxError) as info:
        compile_where(expr)
    err = info.value
    assert err.xapi_exn == XAPI_PARSE_ERROR
    assert err.xapi_params == [expr, XAPI_PARSE_ERROR]
    assert err.offset == offset
    assert "is not a number" in str(err)
    with pytest.raises(WhereSyntaxError):
        parse_where(expr)                                           # found when parsing


@pytest.mark.parametrize("expr, exn, offset, words", [
    ('field "x" <', XAPI_PARSE_ERROR, 11, "expected a value"),
    ('< "1"', XAPI_PARSE_ERROR, 0, "expected true"),
    ('field "x" < "1" < "2"', XAPI_PARSE_ERROR, 16, "two values only"),
    ('field "x" =< "1"', XAPI_PARSE_ERROR, 10, "write <="),
    ('field "x" => "1"', XAPI_PARSE_ERROR, 10, "write >="),
    ('field "x" < > "1"', XAPI_PARSE_ERROR, 12, "expected a value"),
    ('field "x" >< "1"', XAPI_PARSE_ERROR, 11, "expected a value"),
    ('field "x" < true', XAPI_PARSE_ERROR, 12, "compares numbers"),
    ('field "x" < field', XAPI_PARSE_ERROR, 17, "field's name"),
    ('field "x" < "1" in field "y"', XAPI_PARSE_ERROR, 16, "after a complete expression"),
    ('true < "1"', XAPI_PARSE_ERROR, 5, "two values only"),
    # a bare number is an integer right after a comparison, and nowhere else (as in xapi)
    ('field "x" < 10.5', XAPI_LEX_ERROR, 12, '"10.5"'),
    ('field "x" < 1e9', XAPI_LEX_ERROR, 12, "quote"),
    ('field "x" < -', XAPI_LEX_ERROR, 12, "quote"),
    ('field "x" < ten', XAPI_LEX_ERROR, 12, "bare word"),
    ('42 < field "x"', XAPI_LEX_ERROR, 0, "numbers are not values"),
    ('field "x" < 1 and field "y" = 2', XAPI_LEX_ERROR, 30, "numbers are not values"),
    ('field "x" < 1 2', XAPI_LEX_ERROR, 14, "numbers are not values"),
    # still xapi's lexing errors, with the same explanation as before
    ('field "x"<>"1"', XAPI_LEX_ERROR, 9, "not (a = b)"),
    ('field "x" <> 1', XAPI_LEX_ERROR, 10, "not (a = b)"),
    ('field "x"!="1"', XAPI_LEX_ERROR, 9, "not (a = b)"),
    ('field "x"=42', XAPI_LEX_ERROR, 10, "numbers are not values"),
])
def test_compare_syntax_errors(expr, exn, offset, words):
    with pytest.raises(WhereSyntaxError) as info:
        compile_where(expr)
    err = info.value
    assert (err.xapi_exn, err.offset) == (exn, offset)
    assert err.xapi_params == [expr, exn]
    assert words in str(err)


@pytest.mark.parametrize("name, type_name", [
    ("name_label", "str"),
    ("power_state", "str"),                         # enums are strings
    ("resident_on", "str"),                         # refs too
    ("is_a_template", "bool"),                      # bool is not a number
    ("tags", "list"),
    ("other_config", "dict"),
    ("start_time", "DateTime"),
])
@pytest.mark.parametrize("op", ["<", "<=", ">", ">="])
def test_compare_on_a_non_numeric_field_is_a_field_type_error(name, type_name, op):
    pred = compile_where(f'field "{name}" {op} "1"')               # compiles: types are the record's
    with pytest.raises(WhereFieldNotNumericError) as info:
        pred(VM)
    err = info.value
    assert isinstance(err, WhereFieldTypeError) and isinstance(err, WhereFieldError)
    assert (err.field, err.op, err.value_type) == (name, op, type_name)
    assert err.xapi_params == ["field is not a number", name, ""]
    assert f"{op!r} compares numbers" in str(err) and name in str(err) and type_name in str(err)


def test_compare_field_type_error_names_the_field():
    with pytest.raises(WhereFieldNotNumericError) as info:
        matches('"1" < field "name_label"')
    assert (info.value.field, info.value.op) == ("name_label", ">")   # read as field > "1"
    with pytest.raises(WhereFieldNotNumericError) as info:
        matches('field "VCPUs_max" < field "name_label"')
    assert info.value.field == "name_label"
    with pytest.raises(WhereFieldNotNumericError) as info:
        matches('field "power_state" < field "VCPUs_max"')
    assert info.value.field == "power_state"


def test_compare_numeric_subclasses_are_numbers():
    import enum

    from xenapi.wire.values import I4

    class Level(enum.IntEnum):
        HIGH = 3

    assert matches('field "n" > "2"', {"n": I4(3)})
    assert matches('field "n" >= "3"', {"n": Level.HIGH})


def test_compare_unknown_field_behaves_as_for_equality():
    pred = compile_where('field "no_such_field" > "1"')             # compiles fine
    with pytest.raises(WhereFieldError) as info:
        pred(VM)
    assert not isinstance(info.value, WhereFieldTypeError)
    assert info.value.xapi_params == ["missing field", "no_such_field", ""]
    with pytest.raises(WhereFieldError) as info:
        matches('field "no_such_field" > field "VCPUs_max"')
    assert info.value.field == "no_such_field"
    with pytest.raises(WhereFieldError) as info:                    # the right field is read first
        matches('field "missing_left" > field "missing_right"')
    assert info.value.field == "missing_right"


def test_compare_errors_only_when_reached():
    # and/or short-circuit: neither a missing nor a non-numeric field is looked at if not reached
    assert matches('false and field "no_such_field" > "1"') is False
    assert matches('false and field "name_label" > "1"') is False
    assert matches('field "VCPUs_max" > "1" or field "name_label" > "1"') is True
    with pytest.raises(WhereFieldNotNumericError):
        matches('field "VCPUs_max" > "4" or field "name_label" > "1"')


def test_compare_literal_is_converted_once_at_compile_time(monkeypatch):
    import xenapi.state.where as where
    pred = compile_where('field "VCPUs_max" > "1" and "3" > field "VCPUs_max" and "1" < "2"')
    assert pred.fields == ("VCPUs_max",)

    def no_parsing(text):
        raise AssertionError(f"parsed {text!r} while evaluating")

    monkeypatch.setattr(where, "parse_number", no_parsing)
    assert [pred({"VCPUs_max": n}) for n in range(5)] == [False, False, True, False, False]


@pytest.mark.parametrize("text, number", [
    ("0", 0), ("-0", 0), ("+7", 7), ("007", 7), ("10737418240", 10737418240),
    ("-9223372036854775808", -2 ** 63), ("99999999999999999999", 99999999999999999999),
    ("0.5", 0.5), (".5", 0.5), ("5.", 5.0), ("-1.5e3", -1500.0), ("1E-2", 0.01),
    ("", None), ("abc", None), (" 1", None), ("1_0", None), ("0x1", None), ("inf", None),
    ("NaN", None), ("1e", None), ("e1", None), ("+", None), ("1.2.3", None),
])
def test_parse_number(text, number):
    got = parse_number(text)
    assert got == number and type(got) is type(number)


# xapi's own expressions still mean what they meant: the same trees, the same results
@pytest.mark.parametrize("expr", [
    'field "VCPUs_max"="2"',
    'field "memory_static_max"="2147483648" and not field "is_a_template"="true"',
    '(field "power_state"="Halted") or field "name_label"="web01"',
    'field "name_label"=field "power_state"',
    'not true and false',
    '"a<b"="a<b"',
])
def test_classic_xapi_expressions_are_unchanged(expr):
    tree = parse_where(expr)
    assert not any(kind in repr(tree) for kind in ("'lt'", "'le'", "'gt'", "'ge'"))
    records = [VM, {**VM, "VCPUs_max": 20}, {**VM, "power_state": "Halted", "name_label": "x"}]
    expected = {
        'field "VCPUs_max"="2"': [True, False, True],
        'field "memory_static_max"="2147483648" and not field "is_a_template"="true"': [True] * 3,
        '(field "power_state"="Halted") or field "name_label"="web01"': [True, True, True],
        'field "name_label"=field "power_state"': [False] * 3,
        'not true and false': [True] * 3,
        '"a<b"="a<b"': [True] * 3,
    }[expr]
    assert [compile_where(expr)(r) for r in records] == expected


# --- end to end: through the server's dispatcher and the official client ----------------------

def test_compare_through_get_all_records_where(xapi):
    import XenAPI

    records = xapi.xenapi.VM.get_all_records()
    guest = next(ref for ref, r in records.items() if not r["is_control_domain"])

    def expected(test):
        return {ref for ref, r in records.items() if test(int(r["memory_static_max"]))}

    for mem in sorted({int(r["memory_static_max"]) for r in records.values()}):
        for op, test in [(">", lambda m: m > mem), (">=", lambda m: m >= mem),
                         ("<", lambda m: m < mem), ("<=", lambda m: m <= mem)]:
            got = xapi.xenapi.VM.get_all_records_where(f'field "memory_static_max" {op} "{mem}"')
            assert set(got) == expected(test), (op, mem)
    got = xapi.xenapi.VM.get_all_records_where(
        f'field "memory_static_max" >= 0 and field "uuid" = "{records[guest]["uuid"]}"')
    assert got == {guest: records[guest]}

    with pytest.raises(XenAPI.Failure) as info:                     # a non-numeric literal
        xapi.xenapi.VM.get_all_records_where('field "memory_static_max" > "lots"')
    assert info.value.details == ["INVALID_VALUE", 'field "memory_static_max" > "lots"', XAPI_PARSE_ERROR]
    with pytest.raises(XenAPI.Failure) as info:                     # a non-numeric field
        xapi.xenapi.VM.get_all_records_where('field "name_label" > "1"')
    assert info.value.details[0] == "INTERNAL_ERROR"
    assert "field is not a number" in info.value.details[1] and "name_label" in info.value.details[1]
    with pytest.raises(XenAPI.Failure) as info:                     # a field VMs do not have
        xapi.xenapi.VM.get_all_records_where('field "virtual_size" > "1"')
    assert info.value.details == ["INTERNAL_ERROR", "missing field virtual_size"]
