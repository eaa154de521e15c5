"""RBAC as xapi does it (shared/reference/xenapi-wire-and-datamodel.md §6, §2.0, §5): six static
roles on a ladder, a permission per lowercase wire name, checked after the session and before refs.
Every user below logs in over real HTTP; roles come from ``running.add_user``.
"""
from __future__ import annotations

import http.client
import json
import time
import xmlrpc.client
from urllib.parse import urlsplit

import pytest

from xenapi.model import types as T
from xenapi.model.declare import MISSING

LADDER = ("pool-admin", "pool-operator", "vm-power-admin", "vm-admin", "vm-operator", "read-only")
BOGUS_REF = "OpaqueRef:00000000-0000-0000-0000-00000000dead"
# xapi's permissions that are not a message's: destroying (cancelling, updating) others' tasks
XAPI_EXTRA_PERMISSIONS = {"task.destroy/any": ("pool-admin", "pool-operator")}
POOL_ADMIN_ROLE_UUID = "0165f154-ba3e-034e-6b27-5d271af109ba"


def denied_text(least: str) -> str:
    """xapi's message: the roles holding the permission, most privileged first."""
    roles = LADDER[: LADDER.index(least) + 1]
    return "No permission in user session. (Roles with this permission: " + ", ".join(roles) + ")"


class Client:
    """One keep-alive XML-RPC connection for one logged-in user."""

    def __init__(self, running, user: str = "root", password: str = "admin-pw"):
        parts = urlsplit(running.url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
        self.session = self.call("session.login_with_password", user, password, "2.21", "pytest")

    def envelope(self, method: str, *params) -> dict:
        self.conn.request("POST", "/", xmlrpc.client.dumps(params, method, allow_none=True).encode(),
                          {"Content-Type": "text/xml"})
        resp = self.conn.getresponse()
        body = resp.read()
        assert resp.status == 200, body
        (value,), _ = xmlrpc.client.loads(body)
        return value

    def call(self, method: str, *params):
        envelope = self.envelope(method, *params)
        assert envelope["Status"] == "Success", (method, envelope)
        return envelope["Value"]

    def error(self, method: str, *params) -> list[str]:
        envelope = self.envelope(method, *params)
        assert envelope["Status"] == "Failure", (method, envelope)
        return envelope["ErrorDescription"]

    def s(self, method: str, *params):
        """A call with this client's session first."""
        return self.call(method, self.session, *params)

    def s_error(self, method: str, *params) -> list[str]:
        return self.error(method, self.session, *params)

    def close(self):
        self.conn.close()


@pytest.fixture
def login(running):
    """login(role) -> a Client for a fresh user holding exactly that role."""
    clients = []

    def make(role: str) -> Client:
        name = f"user-{role}-{len(clients)}"
        running.add_user(name, role, "pw")
        client = Client(running, name, "pw")
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def root(running):
    client = Client(running)
    yield client
    client.close()


def guest(root: Client, power_state: str) -> str:
    for ref, rec in root.s("VM.get_all_records").items():
        if not rec["is_control_domain"] and not rec["is_a_template"] and rec["power_state"] == power_state:
            return ref
    raise LookupError(power_state)


def role_permissions(running, role: str) -> set[str]:
    """A message's permission for each role it names, xapi's ``/key:`` permission of each
    protected map key for each role that key names, and xapi's extra permissions."""
    out = {perm for perm, roles in XAPI_EXTRA_PERMISSIONS.items() if role in roles}
    for m in running.server.registry.messages.values():
        if role in m.roles:
            out.add(m.permission)
        out |= {f"{m.permission}/key:{key}".lower() for key, roles in (m.key_roles or {}).items() if role in roles}
    return out


# -- the permission sets ----------------------------------------------------------------------

@pytest.mark.parametrize("role", LADDER)
def test_session_permissions_are_exactly_those_of_the_role(running, login, role):
    client = login(role)
    expected = role_permissions(running, role)
    assert set(client.s("session.get_rbac_permissions", client.session)) == expected
    assert "session.logout" in expected and "vm.get_all_records" in expected
    assert all(p == p.lower() for p in expected)


def test_roles_form_a_ladder_of_strictly_growing_permission_sets(running):
    sets = [role_permissions(running, role) for role in LADDER]
    for more, less in zip(sets, sets[1:]):
        assert less < more
    assert sets[0] == set(running.server.registry.permissions()) | set(XAPI_EXTRA_PERMISSIONS)


def test_root_session_holds_every_permission_and_is_local_superuser(running, root):
    assert set(root.s("session.get_rbac_permissions", root.session)) == role_permissions(running, "pool-admin")
    assert root.s("session.get_is_local_superuser", root.session) is True


def test_non_root_session_records_its_user_and_is_not_superuser(login):
    client = login("vm-admin")
    record = client.s("session.get_record", client.session)
    assert record["auth_user_name"].startswith("user-vm-admin")
    assert record["is_local_superuser"] is False


@pytest.mark.parametrize("role", LADDER)
def test_role_objects_carry_the_permissions_of_the_role(running, root, role):
    refs = root.s("role.get_by_name_label", role)
    assert len(refs) == 1
    names = set(root.s("role.get_permissions_name_label", refs[0]))
    assert names == role_permissions(running, role)
    if role == "pool-admin":
        assert root.s("role.get_uuid", refs[0]) == POOL_ADMIN_ROLE_UUID
        assert refs[0] == "OpaqueRef:" + POOL_ADMIN_ROLE_UUID


# -- every message, for every role ------------------------------------------------------------

def dummy(t: T.WireType):
    """A value that passes conversion for type ``t`` (so the call reaches the RBAC check)."""
    if isinstance(t, T.Ref):
        return BOGUS_REF
    if isinstance(t, T.Enum):
        return t.values[0]
    if isinstance(t, T.Set):
        return []
    if isinstance(t, (T.Map, T.Record)):
        return {}
    return {"string": "x", "int": "0", "float": 0.0, "bool": False, "datetime": "19700101T00:00:00Z"}.get(
        t.doc_name, "")


@pytest.mark.parametrize("role", LADDER)
def test_every_message_is_denied_or_allowed_exactly_as_its_roles_say(running, login, role):
    """Denied calls stop at RBAC (safe to make); allowed calls that take a ref are made with a bogus
    one, so they stop right after RBAC with HANDLE_INVALID.  Allowed calls without refs are not made."""
    client = login(role)
    denied = allowed = 0
    for msg in running.server.registry.messages.values():
        if not msg.session:
            continue
        args = [dummy(p.type) for p in msg.params if p.default is MISSING]
        takes_ref = any(isinstance(p.type, T.Ref) for p in msg.params if p.default is MISSING)
        if role in msg.roles:
            if takes_ref:
                description = client.s_error(msg.wire_name, *args)
                assert description[0] == "HANDLE_INVALID", (msg.wire_name, description)
                allowed += 1
            continue
        description = client.s_error(msg.wire_name, *args)
        assert description == ["RBAC_PERMISSION_DENIED", msg.permission, denied_text(msg.roles[-1])], msg.wire_name
        denied += 1
    assert allowed > 0
    assert (denied > 0) == (role != "pool-admin")


# -- every message, for grant-only users ------------------------------------------------------
#
# Alice (role none) may start and stop the VMs tagged web-server (vm1 here); Bob (role none) may
# read vm0.  The oracle below states the rules of auth/grants.py from the outside: listings answer
# with readable objects; self-service calls are open; a message acting on one object of its class
# is allowed when a grant names the message and selects the object, or when the message reads and
# the object is readable (granted, a granted VM's metrics, the user's own session and user);
# anything else is RBAC_PERMISSION_DENIED with the message's permission and roles.

LISTINGS = {"get_all", "get_all_records", "get_all_records_where", "get_by_name_label", "get_by_uuid"}
OPEN_TO_ALL = {"session.logout", "session.change_password", "event.register", "event.unregister",
               "event.get_current_id", "event.from", "event.next"}
NOT_CALLED = {"session.logout", "session.change_password", "event.register", "event.unregister", "event.next"}


def target_index(msg) -> int | None:
    """The parameter naming the object a message acts on: the first required ref to its own class."""
    return next((i for i, p in enumerate(msg.params)
                 if isinstance(p.type, T.Ref) and p.type.cls == msg.cls and p.default is MISSING), None)


@pytest.fixture
def grant_only(running, root):
    """(name, client, {VM message names granted}, {class: refs readable}, {class: a real ref}) for Alice and Bob."""
    vms = {rec["name_label"]: ref for ref, rec in root.s("VM.get_all_records").items()}
    root.s("VM.add_tags", vms["vm1"], "web-server")
    root.s("grant.create", {"subject": "alice", "class": "VM", "operations": ["start", "VM.clean_shutdown", "hard_shutdown"],
                            "where": '"web-server" in field "tags"'})
    root.s("grant.create", {"subject": "bob", "class": "VM", "operations": ["read"], "target": vms["vm0"]})
    host = root.s("host.get_all")[0]
    real = {"VM": None, "host": host, "host_metrics": root.s("host.get_metrics", host),
            "host_cpu": root.s("host.get_host_CPUs", host)[0], "pool": root.s("pool.get_all")[0],
            "task": root.s("task.create", "root's", ""), "role": root.s("role.get_all")[0]}
    users = []
    for name, vm, ops in (("alice", vms["vm1"], {"VM.start", "VM.clean_shutdown", "VM.hard_shutdown"}),
                          ("bob", vms["vm0"], set())):
        running.add_user(name, "none", "pw")
        client = Client(running, name, "pw")
        metrics = root.s("VM.get_metrics", vm)
        own_user = client.s("session.get_this_user", client.session)
        readable = {"VM": {vm}, "VM_metrics": {metrics}, "session": {client.session}, "user": {own_user}}
        mine = {**real, "VM": vm, "VM_metrics": metrics, "session": client.session, "user": own_user,
                "grant": root.s("grant.get_by_uuid", root.s("grant.get_all_records_where",
                                f'field "subject" = "{name}"').popitem()[1]["uuid"])}
        users.append((name, client, ops, readable, mine))
    yield users
    for _, client, *_ in users:
        client.close()


def expectation(msg, ref, ops: set[str], readable: dict[str, set[str]]) -> bool:
    """True when the oracle allows ``msg`` on ``ref`` (its target; None for messages without one)."""
    if msg.implicit and msg.name in LISTINGS or msg.wire_name in OPEN_TO_ALL:
        return True
    if ref is None:
        return False
    granted = msg.wire_name in ops and ref in readable["VM"]        # each grant selects exactly that VM
    return granted or msg.reads and ref in readable.get(msg.cls, set())


def test_every_message_for_grant_only_users_is_answered_as_their_grants_say(running, grant_only):
    """Every message, for Alice and Bob, on a real object of its class and on a bogus ref.  Denials
    are checked exactly; allowed reads are made and must succeed or fail for a reason other than
    RBAC; allowed writes are not made here (tests/test_grants.py makes them)."""
    for name, client, ops, readable, mine in grant_only:
        tally = {"denied": 0, "read": 0, "write": 0}
        for msg in running.server.registry.messages.values():
            if not msg.session:
                continue
            args = [dummy(p.type) for p in msg.params if p.default is MISSING]
            index = target_index(msg)
            targets = [None] if index is None else [mine.get(msg.cls) or BOGUS_REF, BOGUS_REF]
            if msg.wire_name == "event.inject":
                targets, args = [None], ["vm", mine["VM"]]
            for ref in targets:
                if ref is not None:
                    args[index] = ref
                allowed = expectation(msg, ref, ops, readable) or msg.wire_name == "event.inject"
                if not allowed:
                    assert client.s_error(msg.wire_name, *args) == \
                        ["RBAC_PERMISSION_DENIED", msg.permission, denied_text(msg.roles[-1])], (name, msg.wire_name, ref)
                    tally["denied"] += 1
                elif not (msg.reads or msg.implicit and msg.name in LISTINGS) or msg.wire_name in NOT_CALLED:
                    tally["write"] += 1
                else:
                    envelope = client.envelope(msg.wire_name, client.session, *args)
                    assert envelope.get("ErrorDescription", [""])[0] != "RBAC_PERMISSION_DENIED", (name, msg.wire_name)
                    if msg.implicit and msg.name in LISTINGS and envelope["Status"] == "Success":
                        value = envelope["Value"]
                        found = set(value) if isinstance(value, (list, dict)) else {value}
                        assert found <= readable.get(msg.cls, set()), (name, msg.wire_name, found)
                    tally["read"] += 1
        assert tally["denied"] > 400 and tally["read"] > 50, (name, tally)
        assert tally["write"] == (3 if name == "alice" else 0) + len(NOT_CALLED), (name, tally)


def test_walk_oracle_agrees_with_session_permissions_of_grant_only_users(grant_only):
    """What session.get_rbac_permissions shows a grant-only user: no plain role permission but the
    self-service ones, the grant entries, and listings marked /readable."""
    for name, client, ops, _, _ in grant_only:
        perms = set(client.s("session.get_rbac_permissions", client.session))
        plain = {p for p in perms if "/" not in p}
        assert plain == OPEN_TO_ALL - {"event.from", "event.next"}
        assert {"vm.get_all_records/readable", "event.from/readable", "task.destroy/own"} <= perms
        granted = {p.split("/")[0] for p in perms if "/grant:" in p}
        assert granted == {"vm.read"} | {op.lower() for op in ops}


# -- tasks: only their owner, or task.destroy/any ------------------------------------------------

def test_a_user_may_destroy_and_cancel_only_its_own_tasks(root, login):
    ro, other = login("read-only"), login("vm-admin")
    mine = ro.s("task.create", "mine", "")
    theirs = other.s("task.create", "theirs", "")
    any_text = denied_text("pool-operator")
    assert ro.s_error("task.destroy", theirs) == ["RBAC_PERMISSION_DENIED", "task.destroy/any", any_text]
    assert ro.s_error("task.cancel", theirs) == ["RBAC_PERMISSION_DENIED", "task.destroy/any", any_text]
    assert ro.s_error("task.set_status", theirs, "failure") == ["RBAC_PERMISSION_DENIED", "task.destroy/any", any_text]
    assert ro.s_error("task.add_to_other_config", theirs, "k", "v")[:2] == ["RBAC_PERMISSION_DENIED", "task.destroy/any"]
    assert root.s("task.get_status", theirs) == "pending"
    assert ro.s("task.set_progress", mine, 0.5) == "" and ro.s("task.destroy", mine) == ""
    assert mine not in root.s("task.get_all")


def test_pool_operator_may_destroy_anyones_task(root, login):
    theirs = login("vm-admin").s("task.create", "theirs", "")
    assert login("pool-operator").s("task.destroy", theirs) == ""
    assert theirs not in root.s("task.get_all")


def test_a_tasks_owner_key_cannot_be_rewritten(root, login):
    ro = login("read-only")
    mine = ro.s("task.create", "mine", "")
    ro.s("task.set_other_config", mine, {"owner": "root", "note": "x"})
    assert root.s("task.get_other_config", mine) == {"owner": ro.s("session.get_auth_user_name", ro.session), "note": "x"}
    ro.s("task.remove_from_other_config", mine, "owner")
    assert root.s("task.get_other_config", mine)["owner"].startswith("user-read-only")


# -- xapi's documented roles of representative messages (reference §2, §6) ----------------------

XAPI_LEAST_ROLE = {
    "VM.start": "vm-operator", "VM.clean_shutdown": "vm-operator", "VM.hard_shutdown": "vm-operator",
    "VM.clean_reboot": "vm-operator", "VM.hard_reboot": "vm-operator", "VM.pause": "vm-operator",
    "VM.unpause": "vm-operator", "VM.suspend": "vm-operator", "VM.resume": "vm-operator", "VM.shutdown": "vm-operator",
    "VM.add_tags": "vm-operator", "VM.set_tags": "vm-operator", "VM.remove_tags": "vm-operator",
    "VM.clone": "vm-admin", "VM.copy": "vm-admin", "VM.provision": "vm-admin", "VM.destroy": "vm-admin",
    "VM.create": "vm-admin", "VM.set_VCPUs_max": "vm-admin", "VM.set_VCPUs_at_startup": "vm-admin",
    "VM.set_name_label": "vm-admin", "VM.set_other_config": "vm-admin", "VM.add_to_other_config": "vm-admin",
    "VM.set_memory_limits": "vm-power-admin",
    "pool.set_name_label": "pool-operator", "host.set_name_label": "pool-operator",
    "VM.get_all_records": "read-only", "VM.get_record": "read-only", "pool.get_license_state": "read-only",
    "VM.assert_operation_valid": "read-only", "event.from": "read-only", "event.inject": "read-only",
    "session.logout": "read-only", "task.cancel": "read-only", "task.destroy": "read-only",
    "role.get_permissions_name_label": "read-only",
}


@pytest.mark.parametrize("method", sorted(XAPI_LEAST_ROLE))
def test_message_roles_match_xapi(running, method):
    msg = running.server.registry.messages[method]
    assert msg.roles == LADDER[: LADDER.index(XAPI_LEAST_ROLE[method]) + 1]


# -- real calls per role ----------------------------------------------------------------------

def test_read_only_can_read_everything_but_not_start_a_vm(root, login):
    ro = login("read-only")
    records = ro.s("VM.get_all_records")
    assert records and records == root.s("VM.get_all_records")
    assert ro.s("pool.get_all")
    assert ro.s("event.from", ["vm"], "", 0.0)["events"]
    vm = guest(root, "Halted")
    assert ro.s_error("VM.start", vm, False, False) == \
        ["RBAC_PERMISSION_DENIED", "vm.start",
         "No permission in user session. (Roles with this permission: pool-admin, pool-operator, "
         "vm-power-admin, vm-admin, vm-operator)"]
    assert root.s("VM.get_power_state", vm) == "Halted"


def test_denial_uses_the_canonical_permission_for_aliases_and_async(root, login):
    ro = login("read-only")
    vm = guest(root, "Halted")
    tasks_before = set(root.s("task.get_all"))
    for method in ("VM_start", "Async.VM.start"):
        description = ro.s_error(method, vm, False, False)
        assert description == ["RBAC_PERMISSION_DENIED", "vm.start", denied_text("vm-operator")]
    assert set(root.s("task.get_all")) == tasks_before, "a denied Async call must not create a task"


def test_session_is_checked_before_rbac_and_rbac_before_refs(login):
    ro = login("read-only")
    assert ro.error("VM.start", "OpaqueRef:not-a-session", BOGUS_REF, False, False) == \
        ["SESSION_INVALID", "OpaqueRef:not-a-session"]
    assert ro.s_error("VM.start", BOGUS_REF, False, False)[0] == "RBAC_PERMISSION_DENIED"
    vo = login("vm-operator")
    assert vo.s_error("VM.start", BOGUS_REF, False, False) == ["HANDLE_INVALID", "VM", BOGUS_REF]


def test_vm_operator_can_start_and_stop_but_not_destroy_or_resize(root, login):
    vo = login("vm-operator")
    vm = guest(root, "Halted")
    assert vo.s("VM.start", vm, False, False) == ""
    assert root.s("VM.get_power_state", vm) == "Running"
    assert vo.s("VM.hard_shutdown", vm) == ""
    assert root.s("VM.get_power_state", vm) == "Halted"
    assert vo.s("VM.add_tags", vm, "mine") == ""
    assert vo.s_error("VM.destroy", vm) == ["RBAC_PERMISSION_DENIED", "vm.destroy", denied_text("vm-admin")]
    assert vo.s_error("VM.set_memory_limits", vm, "268435456", "268435456", "268435456", "268435456") == \
        ["RBAC_PERMISSION_DENIED", "vm.set_memory_limits", denied_text("vm-power-admin")]
    assert vo.s_error("VM.clone", vm, "nope")[0] == "RBAC_PERMISSION_DENIED"
    assert vm in root.s("VM.get_all")


def test_vm_operator_can_run_async_power_operations(root, login):
    vo = login("vm-operator")
    vm = guest(root, "Running")
    task = vo.s("Async.VM.hard_shutdown", vm)
    assert task.startswith("OpaqueRef:")
    for _ in range(200):
        if vo.s("task.get_status", task) != "pending":
            break
        time.sleep(0.02)
    assert vo.s("task.get_status", task) == "success"
    assert root.s("VM.get_power_state", vm) == "Halted"


def test_vm_admin_can_clone_and_destroy_but_not_set_memory_limits(root, login):
    va = login("vm-admin")
    vm = guest(root, "Halted")
    clone = va.s("VM.clone", vm, "va-clone")
    assert va.s("VM.set_name_label", clone, "renamed") == ""
    assert va.s("VM.destroy", clone) == ""
    assert clone not in root.s("VM.get_all")
    assert va.s_error("VM.set_memory_limits", vm, "268435456", "268435456", "268435456", "268435456") == \
        ["RBAC_PERMISSION_DENIED", "vm.set_memory_limits", denied_text("vm-power-admin")]


def test_vm_power_admin_can_set_memory_limits_but_not_pool_settings(root, login):
    vpa = login("vm-power-admin")
    vm = guest(root, "Halted")
    size = str(512 * 1024 * 1024)
    assert vpa.s("VM.set_memory_limits", vm, size, size, size, size) == ""
    assert root.s("VM.get_memory_static_max", vm) == size
    pool = root.s("pool.get_all")[0]
    assert vpa.s_error("pool.set_name_label", pool, "mine") == \
        ["RBAC_PERMISSION_DENIED", "pool.set_name_label", denied_text("pool-operator")]


def test_pool_name_label_needs_pool_operator(root, login):
    pool = root.s("pool.get_all")[0]
    before = root.s("pool.get_name_label", pool)
    for role in ("read-only", "vm-operator", "vm-admin", "vm-power-admin"):
        assert login(role).s_error("pool.set_name_label", pool, role)[0] == "RBAC_PERMISSION_DENIED"
    assert root.s("pool.get_name_label", pool) == before
    po = login("pool-operator")
    assert po.s("pool.set_name_label", pool, "operated") == ""
    assert root.s("pool.get_name_label", pool) == "operated"
    user = root.s("user.get_all")[0]
    assert po.s_error("user.set_fullname", user, "x") == \
        ["RBAC_PERMISSION_DENIED", "user.set_fullname", denied_text("pool-admin")]
    assert login("pool-admin").s("user.set_fullname", user, "Full Name") == ""


def test_vm_operator_may_set_the_folder_key_of_other_config(root, login):
    """§2.0 map-key RBAC: other_config keys ``folder`` and ``XenCenter.CustomFields.*`` need only vm-operator."""
    vo = login("vm-operator")
    vm = guest(root, "Halted")
    assert vo.envelope("VM.add_to_other_config", vo.session, vm, "folder", "/team")["Status"] == "Success"
    assert vo.envelope("VM.add_to_other_config", vo.session, vm, "XenCenter.CustomFields.owner", "me")["Status"] == \
        "Success"
    assert vo.envelope("VM.remove_from_other_config", vo.session, vm, "folder")["Status"] == "Success"
    assert vo.s_error("VM.add_to_other_config", vm, "plain", "x") == \
        ["RBAC_PERMISSION_DENIED", "vm.add_to_other_config", denied_text("vm-admin")]


def test_protected_other_config_keys_need_pool_admin(root, login):
    """§2.0: keys ``pci`` and ``hvm_serial`` need pool-admin; the permission names the key."""
    va = login("vm-admin")
    vm = guest(root, "Halted")
    assert va.s_error("VM.add_to_other_config", vm, "pci", "0/0000:00:02.0") == \
        ["RBAC_PERMISSION_DENIED", "vm.add_to_other_config/key:pci", denied_text("pool-admin")]
    assert "pci" not in root.s("VM.get_other_config", vm)
    assert root.s("VM.add_to_other_config", vm, "pci", "0/0000:00:02.0") == ""


# -- authentication ---------------------------------------------------------------------------

def test_wrong_password_gives_session_authentication_failed(running, root):
    running.add_user("alice", "read-only", "right")
    description = root.error("session.login_with_password", "alice", "wrong", "1.1", "")
    assert description[:2] == ["SESSION_AUTHENTICATION_FAILED", "alice"]
    assert root.error("session.login_with_password", "root", "not-admin-pw")[:2] == \
        ["SESSION_AUTHENTICATION_FAILED", "root"]
    assert root.call("session.login_with_password", "alice", "right").startswith("OpaqueRef:")


def test_unknown_user_gives_the_same_error_as_a_wrong_password(running, root):
    running.add_user("bob", "read-only", "right")
    wrong = root.error("session.login_with_password", "bob", "wrong")
    unknown = root.error("session.login_with_password", "nobody", "wrong")
    assert unknown[:2] == ["SESSION_AUTHENTICATION_FAILED", "nobody"]
    assert unknown[2:] == wrong[2:], "the error must not tell unknown users from wrong passwords"


def test_failed_login_over_jsonrpc_is_an_error_object(running):
    parts = urlsplit(running.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
    try:
        body = json.dumps({"jsonrpc": "2.0", "method": "session.login_with_password",
                           "params": ["root", "bad"], "id": 3}).encode()
        conn.request("POST", "/jsonrpc", body, {"Content-Type": "application/json"})
        reply = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    assert reply["id"] == 3 and "result" not in reply
    assert reply["error"]["code"] == 1
    assert reply["error"]["message"] == "SESSION_AUTHENTICATION_FAILED"
    assert reply["error"]["data"][0] == "root"


def test_logged_out_session_is_invalid_for_every_role(login):
    for role in ("read-only", "pool-admin"):
        client = login(role)
        assert client.s("session.logout") == ""
        assert client.s_error("VM.get_all") == ["SESSION_INVALID", client.session]
