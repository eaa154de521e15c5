"""Grants (auth/grants.py, classes/grant.py): per-object authorisation on top of the six roles.

The pool: vm0 (running, tagged web-server), vm1 (running), vm2 (halted, profiled web-server),
vm3 (halted).  Alice is grant-only and may start and stop the web-server VMs; Bob is grant-only
and may read vm1.  Everyone logs in with the real XenAPI client over HTTP.
"""
from __future__ import annotations

import time
import xmlrpc.client

import pytest

from tests.conftest import fails, start_server, stop_server

WEB = '"web-server" in field "tags" or "web-server" in field "profiles"'
POWER = ["start", "VM.clean_shutdown", "hard_shutdown", "shutdown"]
OPERATOR_ROLES = "pool-admin, pool-operator, vm-power-admin, vm-admin, vm-operator"
READER_ROLES = OPERATOR_ROLES + ", read-only"
BOGUS = "OpaqueRef:00000000-0000-0000-0000-00000000dead"


def denied(permission: str, roles: str) -> list[str]:
    return ["RBAC_PERMISSION_DENIED", permission, f"No permission in user session. (Roles with this permission: {roles})"]


@pytest.fixture
def pool(tmp_path):
    running = start_server(tmp_path, domains=4, running=2)
    yield running
    stop_server(running)


@pytest.fixture
def admin(pool):
    return pool.session()


@pytest.fixture
def vm(admin) -> dict[str, str]:
    """name -> ref of the four guests, vm0 tagged and vm2 profiled web-server."""
    refs = {rec["name_label"]: ref for ref, rec in admin.xenapi.VM.get_all_records().items()
            if not rec["is_control_domain"]}
    admin.xenapi.VM.add_tags(refs["vm0"], "web-server")
    admin.xenapi.VM.add_profiles(refs["vm2"], "web-server")
    return refs


def grant(admin, subject: str, operations: list[str], *, cls: str = "VM", **selector) -> str:
    return admin.xenapi.grant.create({"subject": subject, "class": cls, "operations": operations, **selector})


@pytest.fixture
def alice(pool, admin, vm):
    pool.add_user("alice", "none", "pw")
    grant(admin, "alice", POWER, where=WEB)
    return pool.session("alice", "pw")


@pytest.fixture
def bob(pool, admin, vm):
    pool.add_user("bob", "none", "pw")
    grant(admin, "bob", ["read"], target=admin.xenapi.VM.get_uuid(vm["vm1"]))
    return pool.session("bob", "pw")


def names(records: dict) -> set[str]:
    return {rec["name_label"] for rec in records.values()}


# -- what a grant-only user sees ----------------------------------------------------------------

def test_listings_show_only_the_objects_the_grants_select(alice, vm):
    assert names(alice.xenapi.VM.get_all_records()) == {"vm0", "vm2"}
    assert set(alice.xenapi.VM.get_all()) == {vm["vm0"], vm["vm2"]}
    assert names(alice.xenapi.VM.get_all_records_where('field "power_state" = "Halted"')) == {"vm2"}
    assert alice.xenapi.VM.get_by_name_label("vm1") == []
    assert alice.xenapi.VM.get_by_name_label("vm0") == [vm["vm0"]]
    assert alice.xenapi.host.get_all() == [] and alice.xenapi.pool.get_all_records() == {}


def test_get_by_uuid_of_an_unreadable_object_is_uuid_invalid_like_an_unknown_one(alice, admin, vm):
    assert alice.xenapi.VM.get_by_uuid(admin.xenapi.VM.get_uuid(vm["vm0"])) == vm["vm0"]
    hidden = admin.xenapi.VM.get_uuid(vm["vm1"])
    assert fails(alice.xenapi.VM.get_by_uuid, hidden) == ["UUID_INVALID", "VM", hidden]
    assert fails(alice.xenapi.VM.get_by_uuid, "no-such-uuid") == ["UUID_INVALID", "VM", "no-such-uuid"]


def test_grant_allows_its_operations_on_the_objects_it_selects(alice, admin, vm):
    alice.xenapi.VM.start(vm["vm2"], False, False)
    assert admin.xenapi.VM.get_power_state(vm["vm2"]) == "Running"
    alice.xenapi.VM.hard_shutdown(vm["vm0"])
    assert admin.xenapi.VM.get_power_state(vm["vm0"]) == "Halted"
    assert alice.xenapi.VM.get_record(vm["vm0"])["power_state"] == "Halted"


def test_grant_denies_other_objects_and_other_operations_as_xapi_does(alice, admin, vm):
    assert fails(alice.xenapi.VM.start, vm["vm3"], False, False) == denied("vm.start", OPERATOR_ROLES)
    assert fails(alice.xenapi.VM.hard_shutdown, vm["vm1"]) == denied("vm.hard_shutdown", OPERATOR_ROLES)
    assert fails(alice.xenapi.VM.get_record, vm["vm1"]) == denied("vm.get_record", READER_ROLES)
    assert fails(alice.xenapi.VM.pause, vm["vm0"]) == denied("vm.pause", OPERATOR_ROLES)
    assert fails(alice.xenapi.VM.destroy, vm["vm2"])[:2] == ["RBAC_PERMISSION_DENIED", "vm.destroy"]
    assert fails(alice.xenapi.VM.set_name_label, vm["vm2"], "mine")[:2] == ["RBAC_PERMISSION_DENIED",
                                                                             "vm.set_name_label"]
    assert admin.xenapi.VM.get_power_state(vm["vm3"]) == "Halted"
    assert admin.xenapi.VM.get_name_label(vm["vm2"]) == "vm2"


def test_a_ref_that_does_not_exist_is_denied_exactly_like_one_not_granted(alice, vm):
    """RBAC comes before the ref check (as in xapi), so denial never tells whether an object exists."""
    assert fails(alice.xenapi.VM.get_record, BOGUS) == fails(alice.xenapi.VM.get_record, vm["vm3"])
    assert fails(alice.xenapi.VM.start, BOGUS, False, False) == denied("vm.start", OPERATOR_ROLES)


def test_objects_join_and_leave_a_where_grant_as_their_fields_change(alice, admin, vm):
    assert fails(alice.xenapi.VM.start, vm["vm3"], False, False)[0] == "RBAC_PERMISSION_DENIED"
    admin.xenapi.VM.add_tags(vm["vm3"], "web-server")
    alice.xenapi.VM.start(vm["vm3"], False, False)
    assert admin.xenapi.VM.get_power_state(vm["vm3"]) == "Running"
    admin.xenapi.VM.remove_tags(vm["vm3"], "web-server")
    assert fails(alice.xenapi.VM.hard_shutdown, vm["vm3"])[0] == "RBAC_PERMISSION_DENIED"
    assert names(alice.xenapi.VM.get_all_records()) == {"vm0", "vm2"}


def test_read_grant_reads_one_vm_and_its_metrics_but_nothing_else(bob, vm):
    record = bob.xenapi.VM.get_record(vm["vm1"])
    assert record["name_label"] == "vm1" and bob.xenapi.VM.get_power_state(vm["vm1"]) == "Running"
    assert bob.xenapi.VM_metrics.get_record(record["metrics"])["uuid"]
    assert list(bob.xenapi.VM_metrics.get_all()) == [record["metrics"]]
    assert bob.xenapi.VM.get_all() == [vm["vm1"]]
    # the record names its host, but dereferencing it is denied
    assert record["resident_on"].startswith("OpaqueRef:")
    assert fails(bob.xenapi.host.get_record, record["resident_on"]) == denied("host.get_record", READER_ROLES)
    assert fails(bob.xenapi.VM.get_record, vm["vm0"]) == denied("vm.get_record", READER_ROLES)
    assert fails(bob.xenapi.VM.hard_shutdown, vm["vm1"]) == denied("vm.hard_shutdown", OPERATOR_ROLES)


def test_grant_only_user_without_grants_logs_in_sees_nothing_and_logs_out(pool):
    pool.add_user("nobody", "none", "pw")
    session = pool.session("nobody", "pw")
    assert session.xenapi.VM.get_all_records() == {} and session.xenapi.task.get_all() == []
    user = session.xenapi.session.get_this_user(session._session)
    assert session.xenapi.user.get_short_name(user) == "nobody"
    assert [(e["class"], e["ref"]) for e in session.xenapi.event_from(["*"], "", 0.0)["events"]] == [("user", user)]
    session.xenapi.session.logout()


# -- groups and roles -----------------------------------------------------------------------------

def test_a_group_grant_applies_to_the_groups_members_from_their_next_call(pool, admin, vm):
    pool.add_user("carol", "none", "pw")
    grant(admin, "group:web-ops", ["read", "start"], target=vm["vm3"])
    carol = pool.session("carol", "pw")
    assert fails(carol.xenapi.VM.get_record, vm["vm3"])[0] == "RBAC_PERMISSION_DENIED"
    user = carol.xenapi.session.get_this_user(carol._session)
    admin.xenapi.user.add_groups(user, "web-ops")
    assert admin.xenapi.user.get_groups(user) == ["web-ops"]
    assert carol.xenapi.VM.get_record(vm["vm3"])["name_label"] == "vm3"
    carol.xenapi.VM.start(vm["vm3"], False, False)
    admin.xenapi.user.remove_groups(user, "web-ops")
    assert fails(carol.xenapi.VM.get_record, vm["vm3"])[0] == "RBAC_PERMISSION_DENIED"


def test_only_a_pool_admin_sets_groups_and_bad_group_names_are_refused(pool, admin):
    pool.add_user("erin", "vm-admin", "pw")
    erin = pool.session("erin", "pw")
    user = erin.xenapi.session.get_this_user(erin._session)
    assert fails(erin.xenapi.user.add_groups, user, "admins") == denied("user.add_groups", "pool-admin")
    assert fails(admin.xenapi.user.set_groups, user, ["no spaces"])[:2] == ["INVALID_VALUE", "groups"]
    assert admin.xenapi.user.get_groups(user) == []


def test_a_role_user_with_a_grant_keeps_the_role_and_gains_the_grant(pool, admin, vm):
    pool.add_user("dave", "read-only", "pw")
    grant(admin, "dave", ["start"], target=vm["vm2"])
    dave = pool.session("dave", "pw")
    assert dave.xenapi.VM.get_all_records().keys() == admin.xenapi.VM.get_all_records().keys()
    dave.xenapi.VM.start(vm["vm2"], False, False)
    assert fails(dave.xenapi.VM.start, vm["vm3"], False, False) == denied("vm.start", OPERATOR_ROLES)


def test_a_grant_never_covers_a_map_key_its_message_does_not(pool, admin, vm):
    """add_to_other_config is vm-admin's, but key pci is pool-admin's: a grant of the message
    covers folder (vm-operator's) and plain keys, never pci."""
    pool.add_user("fay", "none", "pw")
    grant(admin, "fay", ["add_to_other_config"], target=vm["vm3"])
    fay = pool.session("fay", "pw")
    fay.xenapi.VM.add_to_other_config(vm["vm3"], "folder", "/web")
    fay.xenapi.VM.add_to_other_config(vm["vm3"], "owner", "fay")
    assert fails(fay.xenapi.VM.add_to_other_config, vm["vm3"], "pci", "0/0000:00:02.0") == \
        denied("vm.add_to_other_config/key:pci", "pool-admin")
    assert admin.xenapi.VM.get_other_config(vm["vm3"]) == {"folder": "/web", "owner": "fay"}


# -- grants as API objects ------------------------------------------------------------------------

def test_session_permissions_show_the_grants_and_follow_them_live(pool, admin, vm):
    pool.add_user("gil", "none", "pw")
    gil = pool.session("gil", "pw")
    perms = set(gil.xenapi.session.get_rbac_permissions(gil._session))
    assert "session.logout" in perms and "vm.get_all_records/readable" in perms and "vm.start" not in perms
    assert not [p for p in perms if "/grant:" in p]
    ref = grant(admin, "gil", ["start"], where=WEB)
    perms = set(gil.xenapi.session.get_rbac_permissions(gil._session))
    assert {f"vm.start/grant:where:{WEB}", f"vm.read/grant:where:{WEB}"} <= perms
    assert gil.xenapi.session.get_record(gil._session)["rbac_permissions"] == \
        gil.xenapi.session.get_rbac_permissions(gil._session)
    admin.xenapi.grant.destroy(ref)
    assert not [p for p in gil.xenapi.session.get_rbac_permissions(gil._session) if "/grant:" in p]
    assert fails(gil.xenapi.VM.start, vm["vm2"], False, False)[0] == "RBAC_PERMISSION_DENIED"


def test_grant_records_are_complete_and_a_uuid_target_is_stored_as_its_ref(admin, vm):
    uuid = admin.xenapi.VM.get_uuid(vm["vm1"])
    ref = grant(admin, "bob", ["read", "VM.get_*"], target=uuid)
    record = admin.xenapi.grant.get_record(ref)
    assert record["target"] == vm["vm1"] and record["where"] == ""
    assert record["operations"] == ["read", "get_*"] and record["class"] == "VM" and record["subject"] == "bob"
    assert admin.xenapi.grant.get_all_records_where('field "subject" = "bob"') == {ref: record}


@pytest.mark.parametrize("record, error", [
    ({"subject": "x y", "class": "VM", "operations": ["start"], "where": "true"}, ["INVALID_VALUE", "subject", "x y"]),
    ({"subject": "a", "class": "session", "operations": ["read"], "where": "true"}, ["INVALID_VALUE", "class", "session"]),
    ({"subject": "a", "class": "grant", "operations": ["read"], "where": "true"}, ["INVALID_VALUE", "class", "grant"]),
    ({"subject": "a", "class": "nosuch", "operations": ["read"], "where": "true"}, ["INVALID_VALUE", "class", "nosuch"]),
    ({"subject": "a", "class": "VM", "operations": ["fly"], "where": "true"}, ["INVALID_VALUE", "operations", "fly"]),
    ({"subject": "a", "class": "VM", "operations": ["host.start"], "where": "true"},
     ["INVALID_VALUE", "operations", "host.start"]),
    ({"subject": "a", "class": "VM", "operations": ["create"], "where": "true"}, ["INVALID_VALUE", "operations", "create"]),
    ({"subject": "a", "class": "VM", "operations": [], "where": "true"}, ["INVALID_VALUE", "operations", "[]"]),
    ({"subject": "a", "class": "VM", "operations": ["start"]}, ["INVALID_VALUE", "target",
                                                               "give exactly one of target (a ref or uuid) and where"]),
    ({"subject": "a", "class": "VM", "operations": ["start"], "where": "true", "target": BOGUS},
     ["INVALID_VALUE", "target", "give exactly one of target (a ref or uuid) and where"]),
    ({"subject": "a", "class": "VM", "operations": ["start"], "target": BOGUS}, ["HANDLE_INVALID", "VM", BOGUS]),
    ({"subject": "a", "class": "VM", "operations": ["start"], "target": "nope"}, ["UUID_INVALID", "VM", "nope"]),
    ({"subject": "a", "class": "VM", "operations": ["start"], "where": "field tags"},
     ["INVALID_VALUE", "field tags", 'Failure("lexing: empty token")']),
    ({"subject": "a", "class": "VM", "operations": ["start"], "where": 'field "colour" = "red"'},
     ["INVALID_VALUE", "where", "VM has no field 'colour'"]),
    ({"class": "VM", "operations": ["start"], "where": "true"}, ["INTERNAL_ERROR", 'Dispatcher_FieldNotFound("subject")']),
])
def test_bad_grants_are_refused_with_a_clear_error_and_leave_nothing(admin, record, error):
    assert fails(admin.xenapi.grant.create, record) == error
    assert admin.xenapi.grant.get_all() == []


def test_only_a_pool_admin_creates_and_destroys_grants(pool, admin, vm):
    pool.add_user("hal", "pool-operator", "pw")
    hal = pool.session("hal", "pw")
    record = {"subject": "hal", "class": "VM", "operations": ["destroy"], "where": "true"}
    assert fails(hal.xenapi.grant.create, record) == denied("grant.create", "pool-admin")
    ref = admin.xenapi.grant.create(record)
    assert fails(hal.xenapi.grant.destroy, ref) == denied("grant.destroy", "pool-admin")
    assert hal.xenapi.grant.get_all() == [ref]          # read-only and up read grants, as xapi's subjects


def test_grants_groups_and_grant_only_sessions_survive_a_restart(tmp_path):
    first = start_server(tmp_path, domains=2, running=1)
    admin = first.session()
    halted = next(ref for ref, rec in admin.xenapi.VM.get_all_records().items() if rec["name_label"] == "vm1")
    first.add_user("ivy", "none", "pw")
    grant(admin, "group:ops", ["start"], target=halted)
    ivy = first.session("ivy", "pw")
    user = ivy.xenapi.session.get_this_user(ivy._session)
    admin.xenapi.user.set_groups(user, ["ops"])
    admin.xenapi.user.set_fullname(user, "Ivy")
    stop_server(first)
    again = start_server(tmp_path, uris=[first.uri])
    try:
        proxy = xmlrpc.client.ServerProxy(again.url)      # ivy's session, on the restarted server
        assert proxy.VM.get_all(ivy._session)["Value"] == [halted]
        assert proxy.VM.hard_shutdown(ivy._session, halted)["ErrorDescription"][:2] == \
            ["RBAC_PERMISSION_DENIED", "vm.hard_shutdown"]
        assert proxy.VM.start(ivy._session, halted, False, False)["Status"] == "Success"
        record = again.session().xenapi.user.get_record(user)
        assert (record["groups"], record["fullname"]) == (["ops"], "Ivy")
    finally:
        stop_server(again)


# -- own objects: session, user, tasks ------------------------------------------------------------

def test_grant_only_user_follows_its_own_async_task_and_no_one_elses(alice, admin, vm):
    task = alice.xenapi.Async.VM.start(vm["vm2"], False, False)
    for _ in range(200):
        if alice.xenapi.task.get_status(task) != "pending":
            break
        time.sleep(0.02)
    assert alice.xenapi.task.get_record(task)["status"] == "success"
    assert alice.xenapi.task.get_all() == [task]
    other = admin.xenapi.task.create("admin's", "")
    assert fails(alice.xenapi.task.get_record, other) == denied("task.get_record", READER_ROLES)
    assert fails(alice.xenapi.task.destroy, other) == denied("task.destroy", READER_ROLES)
    alice.xenapi.task.destroy(task)
    assert task not in admin.xenapi.task.get_all()


def test_grant_only_user_reads_its_own_session_only(alice, admin):
    record = alice.xenapi.session.get_record(alice._session)
    assert record["auth_user_name"] == "alice" and not record["is_local_superuser"]
    assert alice.xenapi.session.get_is_local_superuser(alice._session) is False
    assert fails(alice.xenapi.session.get_record, admin._session)[:2] == ["RBAC_PERMISSION_DENIED", "session.get_record"]


# -- events ---------------------------------------------------------------------------------------

def test_event_from_shows_only_readable_objects_and_moves_with_the_grants(alice, admin, vm):
    batch = alice.xenapi.event_from(["vm"], "", 0.0)
    assert {e["ref"] for e in batch["events"]} == {vm["vm0"], vm["vm2"]}
    assert {e["operation"] for e in batch["events"]} == {"add"}
    assert int(batch["valid_ref_counts"]["vm"]) == 2
    token = batch["token"]
    admin.xenapi.VM.set_name_description(vm["vm1"], "not for alice")
    admin.xenapi.VM.add_tags(vm["vm3"], "web-server")        # joins
    admin.xenapi.VM.remove_tags(vm["vm0"], "web-server")     # leaves
    admin.xenapi.VM.set_name_description(vm["vm2"], "still hers")
    seen = {}
    deadline = time.monotonic() + 10
    while len(seen) < 3 and time.monotonic() < deadline:
        batch = alice.xenapi.event_from(["vm"], token, 2.0)
        token = batch["token"]
        seen.update({e["ref"]: e["operation"] for e in batch["events"]})
    assert seen == {vm["vm3"]: "add", vm["vm0"]: "del", vm["vm2"]: "mod"}


def test_event_from_adds_what_a_new_grant_gives_and_dels_what_a_destroyed_one_took(pool, admin, vm):
    pool.add_user("jo", "none", "pw")
    jo = pool.session("jo", "pw")
    token = jo.xenapi.event_from(["vm", "vm_metrics"], "", 0.0)["token"]
    ref = grant(admin, "jo", ["read"], target=vm["vm0"])
    batch = jo.xenapi.event_from(["vm", "vm_metrics"], token, 5.0)
    metrics = admin.xenapi.VM.get_metrics(vm["vm0"])
    assert {(e["class"], e["ref"], e["operation"]) for e in batch["events"]} == \
        {("vm", vm["vm0"], "add"), ("vm_metrics", metrics, "add")}
    admin.xenapi.grant.destroy(ref)
    batch = jo.xenapi.event_from(["vm", "vm_metrics"], batch["token"], 5.0)
    assert {(e["ref"], e["operation"]) for e in batch["events"]} == {(vm["vm0"], "del"), (metrics, "del")}


def test_two_event_from_loops_on_one_session_each_get_every_add_and_del(pool, admin, vm):
    pool.add_user("jo", "none", "pw")
    jo = pool.session("jo", "pw")
    first = jo.xenapi.event_from(["vm"], "", 0.0)["token"]
    ref = grant(admin, "jo", ["read"], target=vm["vm0"])
    second = jo.xenapi.event_from(["vm"], "", 0.0)                 # the second loop starts now: vm0 is there
    assert [(e["ref"], e["operation"]) for e in second["events"]] == [(vm["vm0"], "add")]
    batch = jo.xenapi.event_from(["vm"], first, 5.0)               # the first loop has not seen vm0 yet
    assert [(e["ref"], e["operation"]) for e in batch["events"]] == [(vm["vm0"], "add")]
    admin.xenapi.grant.destroy(ref)
    for token in (batch["token"], second["token"]):                # each loop sees it go
        gone = jo.xenapi.event_from(["vm"], token, 5.0)
        assert [(e["ref"], e["operation"]) for e in gone["events"]] == [(vm["vm0"], "del")]


def test_legacy_event_next_shows_only_readable_objects(alice, admin, vm):
    alice.xenapi.event.register(["vm"])
    admin.xenapi.VM.set_name_description(vm["vm1"], "hidden")
    admin.xenapi.VM.set_name_description(vm["vm2"], "visible")
    events = []
    deadline = time.monotonic() + 10
    while not events and time.monotonic() < deadline:
        events = alice.xenapi.event.next()
    assert {e["ref"] for e in events} == {vm["vm2"]}
    assert events[0]["snapshot"]["name_description"] == "visible"


def test_event_inject_works_on_readable_objects_only(alice, vm):
    assert alice.xenapi.event.inject("vm", vm["vm0"]).count(",") == 1
    assert fails(alice.xenapi.event.inject, "vm", vm["vm1"])[:2] == ["RBAC_PERMISSION_DENIED", "event.inject"]
