"""VM messages through the official client: errors with xapi's parameters, allowed operations,
templates, profiles, create/clone/destroy, and libvirt really changed underneath."""

from tests.conftest import fails, guest_vm, vm_create_args

MiB = 1024 * 1024


def test_start_when_running_raises_vm_bad_power_state(xapi):
    vm = guest_vm(xapi, "Running")
    assert fails(xapi.xenapi.VM.start, vm, False, False) == ["VM_BAD_POWER_STATE", vm, "halted", "running"]


def test_hard_shutdown_when_halted_lists_every_allowed_state(xapi):
    vm = guest_vm(xapi, "Halted")
    assert fails(xapi.xenapi.VM.hard_shutdown, vm) == [
        "VM_BAD_POWER_STATE", vm, "paused, suspended, running", "halted"]


def test_allowed_operations_follow_the_power_state(xapi):
    vm = guest_vm(xapi, "Running")
    assert {"pause", "suspend", "clean_shutdown", "hard_shutdown"} <= set(xapi.xenapi.VM.get_allowed_operations(vm))
    xapi.xenapi.VM.pause(vm)
    assert set(xapi.xenapi.VM.get_allowed_operations(vm)) == {"unpause", "hard_shutdown", "hard_reboot", "shutdown",
                                                              "pool_migrate"}
    xapi.xenapi.VM.hard_shutdown(vm)
    ops = set(xapi.xenapi.VM.get_allowed_operations(vm))
    assert {"start", "clone", "destroy"} <= ops and "pause" not in ops
    assert "provision" not in ops                      # only templates are provisioned
    assert fails(xapi.xenapi.VM.provision, vm) == ["ONLY_PROVISION_TEMPLATE"]
    assert xapi.xenapi.VM.get_current_operations(vm) == {}


def test_control_domain_refuses_power_operations(xapi):
    dom0 = next(r for r, v in xapi.xenapi.VM.get_all_records().items() if v["is_control_domain"])
    assert xapi.xenapi.VM.get_allowed_operations(dom0) == []
    assert fails(xapi.xenapi.VM.hard_shutdown, dom0)[0] == "OPERATION_NOT_ALLOWED"


def test_blocked_operation_is_refused_with_its_code(xapi):
    vm = guest_vm(xapi, "Running")
    xapi.xenapi.VM.add_to_blocked_operations(vm, "pause", "maintenance")
    assert "pause" not in xapi.xenapi.VM.get_allowed_operations(vm)
    assert fails(xapi.xenapi.VM.pause, vm) == ["OPERATION_BLOCKED", vm, "maintenance"]


def test_create_defines_a_halted_domain_in_libvirt_with_every_field(running, xapi):
    vm = xapi.xenapi.VM.create(vm_create_args(name_label="made"))
    rec = xapi.xenapi.VM.get_record(vm)
    assert rec["power_state"] == "Halted" and rec["VCPUs_max"] == "2" and rec["other_config"] == {"owner": "tests"}
    assert set(rec) == set(xapi.xenapi.VM.get_record(guest_vm(xapi, "Running")))
    xml = running.server.hosts.connection(running.server.master_ref).xml(rec["uuid"], inactive=True)
    assert "<title>made</title>" in xml


def test_create_with_an_empty_name_label_keeps_it_empty(xapi):
    vm = xapi.xenapi.VM.create(vm_create_args(name_label=""))
    assert xapi.xenapi.VM.get_name_label(vm) == ""          # not libvirt's generated <name>
    xapi.xenapi.VM.set_name_label(vm, "named later")
    assert xapi.xenapi.VM.get_name_label(vm) == "named later"


def test_create_without_a_required_field_fails_and_creates_nothing(xapi):
    before = set(xapi.xenapi.VM.get_all())
    record = vm_create_args()
    del record["PV_args"]
    assert fails(xapi.xenapi.VM.create, record) == ["INTERNAL_ERROR", 'Dispatcher_FieldNotFound("PV_args")']
    assert set(xapi.xenapi.VM.get_all()) == before


def test_create_that_libvirt_refuses_leaves_no_half_written_vm(xapi):
    before = set(xapi.xenapi.VM.get_all())
    details = fails(xapi.xenapi.VM.create, vm_create_args(memory_static_max="0", memory_dynamic_max="0"))
    assert details[0] in ("BACKEND_FAILURE", "VALUE_NOT_SUPPORTED", "MEMORY_CONSTRAINT_VIOLATION")
    assert set(xapi.xenapi.VM.get_all()) == before


def test_clone_copies_settings_with_a_new_identity_and_template_stays_template(xapi):
    vm = xapi.xenapi.VM.create(vm_create_args(name_label="tmpl", is_a_template=True))
    xapi.xenapi.VM.add_profiles(vm, "web-server")
    clone = xapi.xenapi.VM.clone(vm, "from-tmpl")
    src, dst = xapi.xenapi.VM.get_record(vm), xapi.xenapi.VM.get_record(clone)
    assert dst["uuid"] != src["uuid"] and dst["name_label"] == "from-tmpl"
    assert dst["is_a_template"] and dst["profiles"] == ["web-server"] and dst["other_config"] == src["other_config"]
    assert fails(xapi.xenapi.VM.start, clone, False, False) == ["VM_IS_TEMPLATE", clone, "start"]
    xapi.xenapi.VM.provision(clone)
    assert not xapi.xenapi.VM.get_is_a_template(clone)
    xapi.xenapi.VM.start(clone, False, False)
    assert xapi.xenapi.VM.get_power_state(clone) == "Running"


def test_destroy_removes_vm_and_metrics(xapi):
    vm = guest_vm(xapi, "Halted")
    metrics = xapi.xenapi.VM.get_metrics(vm)
    xapi.xenapi.VM.destroy(vm)
    assert fails(xapi.xenapi.VM.get_record, vm) == ["HANDLE_INVALID", "VM", vm]
    assert fails(xapi.xenapi.VM_metrics.get_record, metrics)[0] == "HANDLE_INVALID"


def test_destroy_of_a_running_vm_is_refused(xapi):
    vm = guest_vm(xapi, "Running")
    assert fails(xapi.xenapi.VM.destroy, vm) == ["VM_BAD_POWER_STATE", vm, "halted, suspended", "running"]


def test_set_memory_limits_checks_the_constraint_and_reaches_libvirt(running, xapi):
    vm = guest_vm(xapi, "Halted")
    assert fails(xapi.xenapi.VM.set_memory_limits, vm, str(512 * MiB), str(256 * MiB), str(256 * MiB),
                  str(256 * MiB))[0] == "MEMORY_CONSTRAINT_VIOLATION"
    xapi.xenapi.VM.set_memory_limits(vm, str(128 * MiB), str(512 * MiB), str(384 * MiB), str(384 * MiB))
    rec = xapi.xenapi.VM.get_record(vm)
    assert (rec["memory_static_min"], rec["memory_static_max"], rec["memory_dynamic_max"]) == (
        str(128 * MiB), str(512 * MiB), str(384 * MiB))


def test_vcpus_change_only_while_halted(xapi):
    running_vm = guest_vm(xapi, "Running")
    assert fails(xapi.xenapi.VM.set_VCPUs_max, running_vm, "4")[0] == "VM_BAD_POWER_STATE"
    vm = guest_vm(xapi, "Halted")
    xapi.xenapi.VM.set_VCPUs_max(vm, "4")
    xapi.xenapi.VM.set_VCPUs_at_startup(vm, "3")
    assert (xapi.xenapi.VM.get_VCPUs_max(vm), xapi.xenapi.VM.get_VCPUs_at_startup(vm)) == ("4", "3")
    assert fails(xapi.xenapi.VM.set_VCPUs_at_startup, vm, "5")[0] == "VALUE_NOT_SUPPORTED"


def test_name_label_is_written_to_libvirt_title(running, xapi):
    vm = guest_vm(xapi, "Running")
    xapi.xenapi.VM.set_name_label(vm, "renamed")
    uuid = xapi.xenapi.VM.get_uuid(vm)
    assert "<title>renamed</title>" in running.server.hosts.connection(running.server.master_ref).xml(uuid)
    assert xapi.xenapi.VM.get_by_name_label("renamed") == [vm]


def test_profiles_hold_any_value_and_select_vms(xapi):
    pool = xapi.xenapi.pool.get_all()[0]
    assert xapi.xenapi.pool.get_suggested_profiles(pool) == [
        "web-server", "sendmail-switch", "dbms-host", "devel-workstation"]
    vm = guest_vm(xapi, "Running")
    xapi.xenapi.VM.add_profiles(vm, "web-server")
    xapi.xenapi.VM.add_profiles(vm, "my own profile")
    xapi.xenapi.VM.add_profiles(vm, "web-server")          # idempotent, as xapi's add_<set>
    assert xapi.xenapi.VM.get_profiles(vm) == ["web-server", "my own profile"]
    selected = xapi.xenapi.VM.get_all_records_where('"web-server" in field "profiles"')
    assert list(selected) == [vm]
    xapi.xenapi.VM.remove_profiles(vm, "web-server")
    assert xapi.xenapi.VM.get_all_records_where('"web-server" in field "profiles"') == {}


def test_where_uses_xapi_syntax(xapi):
    running_refs = xapi.xenapi.VM.get_all_records_where(
        'field "power_state"="Running" and field "is_control_domain"="false"')
    assert running_refs and all(v["power_state"] == "Running" for v in running_refs.values())


def test_async_start_failure_lands_in_the_task(xapi):
    import time
    vm = guest_vm(xapi, "Running")
    task = xapi.xenapi.Async.VM.start(vm, False, False)
    while xapi.xenapi.task.get_status(task) == "pending":
        time.sleep(0.02)
    rec = xapi.xenapi.task.get_record(task)
    assert rec["status"] == "failure" and rec["error_info"] == ["VM_BAD_POWER_STATE", vm, "halted", "running"]
    xapi.xenapi.task.destroy(task)
    assert fails(xapi.xenapi.task.get_record, task)[0] == "HANDLE_INVALID"


def test_clean_shutdown_that_never_completes_times_out_and_leaves_vm_consistent(tmp_path):
    from tests.conftest import start_server, stop_server
    running = start_server(tmp_path, clean_shutdown_timeout=0.3)
    try:
        xapi = running.session()
        vm = guest_vm(xapi, "Running")
        conn = running.server.hosts.connection(running.server.master_ref)
        conn.shutdown = lambda uuid: None                 # a guest that ignores the power button
        assert fails(xapi.xenapi.VM.clean_shutdown, vm) == ["VM_SHUTDOWN_TIMEOUT", vm, "0.3"]
        rec = xapi.xenapi.VM.get_record(vm)
        assert rec["power_state"] == "Running" and rec["current_operations"] == {}
        assert "clean_shutdown" in rec["allowed_operations"]
        xapi.xenapi.VM.shutdown(vm)                       # clean, then hard after the timeout
        assert xapi.xenapi.VM.get_power_state(vm) == "Halted"
    finally:
        stop_server(running)


def test_cancelling_a_waiting_clean_shutdown_ends_its_task_cancelled(tmp_path):
    import time
    from tests.conftest import start_server, stop_server
    running = start_server(tmp_path, clean_shutdown_timeout=30)
    try:
        xapi = running.session()
        vm = guest_vm(xapi, "Running")
        running.server.hosts.connection(running.server.master_ref).shutdown = lambda uuid: None
        task = xapi.xenapi.Async.VM.clean_shutdown(vm)
        deadline = time.monotonic() + 10
        while "cancel" not in xapi.xenapi.task.get_allowed_operations(task):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert xapi.xenapi.VM.get_current_operations(vm) == {task: "clean_shutdown"}
        xapi.xenapi.task.cancel(task)
        while xapi.xenapi.task.get_status(task) in ("pending", "cancelling"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        rec = xapi.xenapi.task.get_record(task)
        assert rec["status"] == "cancelled" and rec["error_info"] == ["TASK_CANCELLED", task]
        assert xapi.xenapi.VM.get_current_operations(vm) == {}
        assert fails(xapi.xenapi.task.cancel, task)[0] == "OPERATION_NOT_ALLOWED"
    finally:
        stop_server(running)


def test_boot_settings_are_written_to_libvirt_and_survive_its_next_observation(running, xapi):
    """HVM_boot_params' order and PV_bootloader(_args) live in the domain's XML: set through the API,
    they are what libvirt holds, so re-reading the domain keeps them (they used to be undone); the
    keys the XML has no place for are kept by the store."""
    x = xapi.xenapi
    vm = guest_vm(xapi, "Halted")
    uuid = x.VM.get_uuid(vm)
    x.VM.set_HVM_boot_params(vm, {"order": "dcn"})
    running.server.reconciler.refresh(running.server.hosts.master, uuid)
    assert x.VM.get_HVM_boot_params(vm) == {"order": "dcn"}
    xml = running.server.hosts.connection(running.server.hosts.master).xml(uuid, inactive=True)
    assert [b for b in ("<boot dev='cdrom'/>", "<boot dev='hd'/>", "<boot dev='network'/>") if b in xml] == [
        "<boot dev='cdrom'/>", "<boot dev='hd'/>", "<boot dev='network'/>"]
    assert xml.index("<boot dev='cdrom'/>") < xml.index("<boot dev='hd'/>") < xml.index("<boot dev='network'/>")
    x.VM.add_to_HVM_boot_params(vm, "firmware", "uefi")              # a key the XML has no place for: the store's
    running.server.reconciler.refresh(running.server.hosts.master, uuid)
    assert x.VM.get_HVM_boot_params(vm) == {"order": "dcn", "firmware": "uefi"}
    x.VM.set_PV_bootloader(vm, "pygrub")
    x.VM.set_PV_bootloader_args(vm, "--quiet")
    running.server.reconciler.refresh(running.server.hosts.master, uuid)
    assert (x.VM.get_PV_bootloader(vm), x.VM.get_PV_bootloader_args(vm)) == ("pygrub", "--quiet")


def test_platform_keys_the_domain_xml_has_no_place_for_are_kept_by_the_store(running, xapi):
    """Ansible's cores-per-socket, XO's device-model: kept across libvirt's observations, at
    VM.create and through add_to_platform; keys the XML holds (acpi, apic, pae, machine) stay libvirt's."""
    x = xapi.xenapi
    from tests.conftest import vm_create_args
    vm = x.VM.create(vm_create_args(name_label="platform", platform={"cores-per-socket": "2", "acpi": "true"}))
    x.VM.add_to_platform(vm, "device-model", "qemu-upstream-compat")
    running.server.reconciler.refresh(running.server.hosts.master, x.VM.get_uuid(vm))
    platform = x.VM.get_platform(vm)
    assert platform["cores-per-socket"] == "2" and platform["device-model"] == "qemu-upstream-compat"
    assert platform["acpi"] == "true"
    clone = x.VM.clone(vm, "platform clone")
    assert x.VM.get_platform(clone)["cores-per-socket"] == "2"


def test_a_platform_flag_the_xml_holds_is_written_to_libvirt(running, xapi):
    x = xapi.xenapi
    vm = x.VM.create(vm_create_args(name_label="flags"))
    uuid = x.VM.get_uuid(vm)
    x.VM.remove_from_platform(vm, "pae")
    x.VM.add_to_platform(vm, "pae", "true")
    x.VM.add_to_platform(vm, "cores-per-socket", "2")
    running.server.reconciler.refresh(running.server.hosts.master, uuid)
    assert x.VM.get_platform(vm)["pae"] == "true" and x.VM.get_platform(vm)["cores-per-socket"] == "2"
    assert "<pae/>" in running.server.hosts.connection(running.server.hosts.master).xml(uuid, inactive=True)
    x.VM.add_to_platform(vm, "acpi", "false") if "acpi" not in x.VM.get_platform(vm) else \
        x.VM.set_platform(vm, {**x.VM.get_platform(vm), "acpi": "false"})
    running.server.reconciler.refresh(running.server.hosts.master, uuid)
    assert x.VM.get_platform(vm)["acpi"] == "false"
    assert "<acpi/>" not in running.server.hosts.connection(running.server.hosts.master).xml(uuid, inactive=True)
