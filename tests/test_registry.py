"""The registry checks itself: every message complete, every record uniform, docs current."""
import pytest

from classes import REGISTRY
from xenapi import docgen
from xenapi.errors import ERRORS
from xenapi.model import types as T
from xenapi.model.declare import declare_class, fields, message, param, relations
from xenapi.model.registry import Registry
from xenapi.model.roles import LADDER


@pytest.mark.parametrize("msg", list(REGISTRY.messages.values()), ids=lambda m: m.wire_name)
def test_message_is_declared_completely(msg):
    assert msg.doc and msg.roles and msg.impl
    assert set(msg.errors) <= set(ERRORS)
    assert msg.roles == LADDER[: len(msg.roles)]


def test_every_message_has_its_underscore_alias():
    for name in REGISTRY.messages:
        cls, _, msg = name.partition(".")
        assert REGISTRY.lookup(f"{cls}_{msg}")[0].wire_name == name
        assert REGISTRY.lookup(f"Async.{name}")[0].wire_name == name


def test_list_methods_hides_get_all_records_where_but_lookup_finds_it():
    assert "VM.get_all_records_where" not in REGISTRY.list_methods()
    assert REGISTRY.lookup("VM.get_all_records_where")
    assert "VM.start" in REGISTRY.list_methods()


def test_session_refs_are_not_listable():
    assert REGISTRY.lookup("session.get_all") is None
    assert REGISTRY.lookup("session.get_all_records") is None


def test_setters_exist_only_for_rw_fields():
    assert REGISTRY.lookup("VM.set_name_label")
    assert REGISTRY.lookup("VM.set_power_state") is None
    assert REGISTRY.lookup("VM.add_to_other_config") and REGISTRY.lookup("VM.add_tags")
    assert REGISTRY.lookup("VM.add_profiles") and REGISTRY.lookup("VM.remove_profiles")


def test_read_only_role_may_read_everything_and_change_nothing_on_vms():
    ro = REGISTRY.permissions_of("read-only")
    assert "vm.get_all_records" in ro and "vm.start" not in ro
    assert "vm.start" in REGISTRY.permissions_of("vm-operator")


def test_message_without_doc_is_rejected_at_build():
    bad = declare_class("thing", "A thing.", fields("uuid:s", {}),
                        [message("poke", "", impl=lambda ctx: None)])
    with pytest.raises(ValueError, match="no doc"):
        Registry([bad])


def test_message_naming_an_undeclared_class_is_rejected_at_build():
    bad = declare_class("thing", "A thing.", fields("uuid:s", {}), [message(
        "poke", "Poke.", impl=lambda ctx, a: None, params=[param(T.Ref("nosuchclass"), "a")])])
    with pytest.raises(ValueError, match="unknown class nosuchclass"):
        Registry([bad])


def test_a_field_of_an_undeclared_class_is_absent_not_forwarded():
    """A class is declared or does not exist: a field naming one of xapi's classes this server
    does not declare is always empty, and the registry says which classes those are."""
    registry = Registry([declare_class("thing", "A thing.", fields("uuid:s gadgets:@gadget[]", {}))])
    assert registry.absent == {"gadget"}
    assert "VUSB" in REGISTRY.absent and not REGISTRY.absent & set(REGISTRY.classes)


def test_parameter_without_default_after_one_with_is_rejected():
    bad = declare_class("thing", "A thing.", fields("uuid:s", {}), [message(
        "poke", "Poke.", impl=lambda ctx, a, b: None,
        params=[param(T.Int, "a", default=1), param(T.Int, "b")])])
    with pytest.raises(ValueError, match="without default"):
        Registry([bad])


def test_docs_reference_is_current():
    assert docgen.OUT.read_text() == docgen.render(REGISTRY), "run: python -m xenapi.docgen"


def test_a_set_of_refs_with_no_relation_is_rejected_at_build():
    owner = declare_class("owner", "d", fields("uuid:s items:@item[]", {}))
    item = declare_class("item", "d", fields("uuid:s owner:@owner", {}))
    with pytest.raises(ValueError, match="owner.items: a set of item refs with no relation"):
        Registry([owner, item])
    Registry([owner, item], relations("item.owner owner.items"))      # declared: both sides known
    Registry([owner, item], unrelated=["owner.items"])                # or said to be no relation's side


def test_a_relation_whose_sides_do_not_match_is_rejected_at_build():
    owner = declare_class("owner", "d", fields("uuid:s items*:@item[] name:s", {}))
    item = declare_class("item", "d", fields("uuid:s owner:@owner", {}))
    with pytest.raises(ValueError, match="cannot be RW"):
        Registry([owner, item], relations("item.owner owner.items"))
    with pytest.raises(ValueError, match="expected Ref"):
        Registry([owner, item], relations("item.owner owner.name"), unrelated=["owner.items"])
    with pytest.raises(ValueError, match="no field"):
        Registry([owner, item], relations("item.nowhere owner.items"))


def test_every_declared_set_of_refs_is_a_relation_or_said_unrelated():
    sides = {f"{r.many_cls}.{r.many_field}" for r in REGISTRY.relations}
    assert {"host.resident_VMs", "VM.consoles", "host.host_CPUs", "task.subtasks"} <= sides
