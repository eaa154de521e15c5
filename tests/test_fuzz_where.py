"""Fuzzing the where language (xenapi/state/where.py): compile_where raises only WhereSyntaxError, and a
compiled predicate returns a bool or raises WhereFieldError, on any record the store can hold."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from classes import REGISTRY
from tests import fuzzing as F
from xenapi.state.where import WhereSyntaxError, compile_where, parse_number

CI = settings.get_profile("xenapi-ci")


@settings(CI)
@given(F.where_texts(), st.lists(F.store_records(REGISTRY), max_size=3),
       st.one_of(st.none(), st.just("OpaqueRef:x")))
def test_where_raises_only_its_declared_errors(expr, records, ref):
    F.check_where(expr, records, ref)


@settings(CI)
@given(F.wire_values.filter(lambda v: not isinstance(v, str)))
def test_where_of_a_non_string_raises_type_error(expr):
    F.check_where(expr, [])


# -- the numeric comparison extension ---------------------------------------------------------------

_COMPARE_WORDS = [*F._WHERE_WORDS, "<", "<=", ">", ">=", "=<", "<>", '"1"', '"-5"', '"0.5"', '"1e3"', "-7",
                  "10737418240", '"9223372036854775807"', '"-9223372036854775808"', '"abc"', '"VCPUs_max"',
                  '"memory_static_max"', '"HVM_shadow_multiplier"', '"is_a_template"']


@st.composite
def compare_texts(draw):
    words = draw(st.lists(st.sampled_from(_COMPARE_WORDS), max_size=16))
    seps = draw(st.lists(st.sampled_from([" ", "", "\t", "\n", "\r"]), min_size=len(words), max_size=len(words)))
    return "".join(w + s for w, s in zip(words, seps))


@settings(CI)
@given(compare_texts(), st.lists(F.store_records(REGISTRY), max_size=3), st.one_of(st.none(), st.just("OpaqueRef:x")))
def test_comparisons_raise_only_declared_errors(expr, records, ref):
    F.check_where(expr, records, ref)


_INT64 = st.integers(-2 ** 63, 2 ** 63 - 1)
_NUMBERS = st.one_of(_INT64, st.floats(allow_nan=False, allow_infinity=False))
_OPS = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}


@settings(CI)
@given(_NUMBERS, st.one_of(_INT64, st.floats(allow_nan=False, allow_infinity=False).map(repr)),
       st.sampled_from(sorted(_OPS)), st.booleans())
def test_comparison_agrees_with_python(value, literal, op, bare):
    text = str(literal)
    number = parse_number(text)
    assert number == (literal if isinstance(literal, int) else float(literal))
    right = text if bare and isinstance(literal, int) else f'"{text}"'
    rec = {"n": value}
    assert compile_where(f'field "n" {op} {right}')(rec) is _OPS[op](value, number)
    flipped = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}[op]
    assert compile_where(f'"{text}" {flipped} field "n"')(rec) is _OPS[op](value, number)
    assert compile_where(f'not field "n" {op} {right}')(rec) is not _OPS[op](value, number)


# -- defects fuzzing found, fixed: regressions -----------------------------------------------------

@pytest.mark.parametrize("expr", ["(" * 400 + "true" + ")" * 400, "not " * 1200 + "true", "true and " * 1200 + "true"],
                         ids=["parentheses", "not", "and"])
def test_deep_expression_compiles_or_is_a_syntax_error(expr):
    try:
        predicate = compile_where(expr)
    except WhereSyntaxError:
        return
    assert predicate({}) in (True, False)
