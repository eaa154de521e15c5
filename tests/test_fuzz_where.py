"""Fuzzing the where language (xenapi/where.py): compile_where raises only WhereSyntaxError, and a
compiled predicate returns a bool or raises WhereFieldError, on any record the store can hold."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from classes import REGISTRY
from tests import fuzzing as F
from xenapi.where import WhereSyntaxError, compile_where

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


# -- defects fuzzing found, fixed: regressions -----------------------------------------------------

@pytest.mark.parametrize("expr", ["(" * 400 + "true" + ")" * 400, "not " * 1200 + "true", "true and " * 1200 + "true"],
                         ids=["parentheses", "not", "and"])
def test_deep_expression_compiles_or_is_a_syntax_error(expr):
    try:
        predicate = compile_where(expr)
    except WhereSyntaxError:
        return
    assert predicate({}) in (True, False)
