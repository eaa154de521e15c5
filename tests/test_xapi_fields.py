"""Every record carries every field of xapi's record for its class, with xapi's type and qualifier.

``XAPI_FIELDS`` is written from xapi's datamodel (xapi-project/xen-api ``ocaml/idl/datamodel*.ml`` at
e2ee48d, 2026-08; ``doc/data/xenapi.json`` for the fields published by 2024-05), in the notation of
shared/reference and ``classes/``: ``name[qualifier]:type`` with no qualifier = RO (runtime),
``^`` = RO (constructor), ``*`` = RW.  Fields xapi marks internal_only are not in its records and not
here.  Where xapi declares a field StaticRO but gives it a hand-written setter (VM.other_config,
VM.platform, VM.blocked_operations, task.other_config), the table says RW: that is what a client sees.
"""
import pytest

from classes import REGISTRY
from classes.enums import ENUMS
from xenapi.model import types as T
from xenapi.model.declare import CTOR, RW

XAPI_FIELDS = {
    "session": """
        uuid:s this_host:@host this_user:@user last_active:dt pool:b other_config*:s2s is_local_superuser:b
        subject:@subject validation_time:dt auth_user_sid:s auth_user_name:s rbac_permissions^:s[] tasks:@task[]
        parent^:@session originator:s client_certificate:b""",
    "pool": """
        uuid:s name_label*:s name_description*:s master:@host default_SR*:@SR suspend_image_SR*:@SR
        crash_dump_SR*:@SR other_config*:s2s ha_enabled:b ha_configuration:s2s ha_statefiles:s[]
        ha_host_failures_to_tolerate:i ha_plan_exists_for:i ha_allow_overcommit*:b ha_overcommitted:b
        blobs:{s:@blob} tags*:s[] gui_config*:s2s health_check_config*:s2s wlb_url:s wlb_username:s
        wlb_enabled*:b wlb_verify_cert*:b redo_log_enabled:b redo_log_vdi:@VDI vswitch_controller:s
        restrictions:s2s metadata_VDIs:@VDI[] ha_cluster_stack:s allowed_operations:pool_allowed_operations[]
        current_operations:{s:pool_allowed_operations} guest_agent_config:s2s cpu_info:s2s
        policy_no_vendor_device*:b live_patching_disabled*:b igmp_snooping_enabled:b uefi_certificates^:s
        custom_uefi_certificates^:s is_psr_pending*:b tls_verification_enabled:b repositories:@Repository[]
        client_certificate_auth_enabled:b client_certificate_auth_name:s repository_proxy_url:s
        repository_proxy_username:s repository_proxy_password:@secret migration_compression*:b
        coordinator_bias*:b local_auth_max_threads^:i ext_auth_max_threads^:i telemetry_uuid:@secret
        telemetry_frequency:telemetry_frequency telemetry_next_collection:dt last_update_sync:dt
        update_sync_frequency:update_sync_frequency update_sync_day:i update_sync_enabled:b
        ext_auth_cache_enabled:b ext_auth_cache_size:i ext_auth_cache_expiry:i recommendations:s2s
        license_server*:s2s ha_reboot_vm_on_internal_shutdown*:b limit_console_sessions*:b
        vm_console_idle_timeout*:i auto_update_vm_secureboot_certificates*:b""",
    "host": """
        uuid:s name_label*:s name_description*:s memory_overhead:i allowed_operations:host_allowed_operations[]
        current_operations:{s:host_allowed_operations} API_version_major:i API_version_minor:i
        API_version_vendor:s API_version_vendor_implementation:s2s enabled:b software_version^:s2s
        other_config*:s2s capabilities^:s[] cpu_configuration:s2s sched_policy:s supported_bootloaders:s[]
        resident_VMs:@VM[] logging*:s2s PIFs:@PIF[] suspend_image_sr*:@SR crash_dump_sr*:@SR
        crashdumps:@host_crashdump[] patches:@host_patch[] updates:@pool_update[] PBDs:@PBD[]
        host_CPUs:@host_cpu[] cpu_info:s2s hostname*:s address*:s metrics:@host_metrics license_params:s2s
        ha_statefiles:s[] ha_network_peers:s[] blobs:{s:@blob} tags*:s[] external_auth_type:s
        external_auth_service_name:s external_auth_configuration:s2s edition:s license_server*:s2s
        bios_strings:s2s power_on_mode:s power_on_config:s2s local_cache_sr^:@SR chipset_info:s2s PCIs:@PCI[]
        PGPUs:@PGPU[] PUSBs:@PUSB[] ssl_legacy^:b guest_VCPUs_params*:s2s display*:host_display
        virtual_hardware_platform_versions:i[] control_domain:@VM updates_requiring_reboot:@pool_update[]
        features:@Feature[] iscsi_iqn^:s multipathing^:b uefi_certificates^:s certificates:@Certificate[]
        editions:s[] pending_guidances:update_guidances[] tls_verification_enabled:b last_software_update:dt
        https_only:b latest_synced_updates_applied:latest_synced_updates_applied_state
        numa_affinity_policy:host_numa_affinity_policy pending_guidances_recommended:update_guidances[]
        pending_guidances_full:update_guidances[] last_update_hash:s ssh_enabled:b ssh_enabled_timeout:i
        ssh_expiry:dt console_idle_timeout:i ssh_auto_mode:b max_cstate:s secure_boot:b ntp_mode:host_ntp_mode
        ntp_custom_servers:s[] timezone:s""",
    "host_metrics": """
        uuid:s memory_total:i memory_free:i live:b last_updated:dt other_config*:s2s""",
    "host_cpu": """
        uuid:s host:@host number:i vendor:s speed:i modelname:s family:i model:i stepping:s flags:s features:s
        utilisation:f other_config*:s2s""",
    "SR": """
        uuid:s name_label^:s name_description^:s allowed_operations:storage_operations[]
        current_operations:{s:storage_operations} VDIs:@VDI[] PBDs:@PBD[] virtual_allocation:i
        physical_utilisation:i physical_size^:i type^:s content_type^:s shared:b other_config*:s2s tags*:s[]
        sm_config*:s2s blobs:{s:@blob} local_cache_enabled:b introduced_by:@DR_task clustered:b is_tools_sr:b""",
    "PBD": """
        uuid:s host^:@host SR^:@SR device_config^:s2s currently_attached:b other_config*:s2s""",
    "VDI": """
        uuid:s name_label^:s name_description^:s allowed_operations:vdi_operations[]
        current_operations:{s:vdi_operations} SR^:@SR VBDs:@VBD[] crash_dumps:@crashdump[] virtual_size^:i
        physical_utilisation:i type^:vdi_type sharable^:b read_only^:b other_config*:s2s storage_lock:b
        location:s managed:b missing:b parent:@VDI xenstore_data*:s2s sm_config*:s2s is_a_snapshot:b
        snapshot_of:@VDI snapshots:@VDI[] snapshot_time:dt tags*:s[] allow_caching:b on_boot:on_boot
        metadata_of_pool:@pool metadata_latest:b is_tools_iso:b cbt_enabled:b""",
    "VBD": """
        uuid:s allowed_operations:vbd_operations[] current_operations:{s:vbd_operations} VM^:@VM VDI^:@VDI
        device^:s userdevice*:s bootable*:b mode^:vbd_mode type*:vbd_type unpluggable*:b storage_lock:b empty^:b
        other_config*:s2s currently_attached^:b status_code:i status_detail:s runtime_properties:s2s
        qos_algorithm_type*:s qos_algorithm_params*:s2s qos_supported_algorithms:s[] metrics:@VBD_metrics""",
    "SM": """
        uuid:s name_label:s name_description:s type:s vendor:s copyright:s version:s required_api_version:s
        configuration:s2s capabilities:s[] features:{s:i} other_config*:s2s driver_filename:s
        required_cluster_stack:s[]""",
    "network": """
        uuid:s name_label*:s name_description*:s allowed_operations:network_operations[]
        current_operations:{s:network_operations} VIFs:@VIF[] PIFs:@PIF[] MTU*:i other_config*:s2s bridge^:s
        managed^:b blobs:{s:@blob} tags*:s[] default_locking_mode:network_default_locking_mode
        assigned_ips:{@VIF:s} purpose:network_purpose[]""",
    "PIF": """
        uuid:s device^:s network^:@network host^:@host MAC^:s MTU^:i VLAN^:i metrics:@PIF_metrics physical:b
        currently_attached:b ip_configuration_mode:ip_configuration_mode IP:s netmask:s gateway:s DNS:s
        bond_slave_of:@Bond bond_master_of:@Bond[] VLAN_master_of:@VLAN VLAN_slave_of:@VLAN[] management:b
        other_config*:s2s disallow_unplug:b tunnel_access_PIF_of:@tunnel[] tunnel_transport_PIF_of:@tunnel[]
        ipv6_configuration_mode:ipv6_configuration_mode IPv6:s[] ipv6_gateway:s
        primary_address_type:primary_address_type managed^:b properties:s2s capabilities:s[]
        igmp_snooping_status:pif_igmp_status sriov_physical_PIF_of:@network_sriov[]
        sriov_logical_PIF_of:@network_sriov[] PCI:@PCI""",
    "PIF_metrics": """
        uuid:s io_read_kbs:f io_write_kbs:f carrier:b vendor_id:s vendor_name:s device_id:s device_name:s speed:i
        duplex:b pci_bus_path:s last_updated:dt other_config*:s2s""",
    "VIF": """
        uuid:s allowed_operations:vif_operations[] current_operations:{s:vif_operations} device^:s
        network^:@network VM^:@VM MAC^:s MTU^:i other_config*:s2s currently_attached^:b status_code:i
        status_detail:s runtime_properties:s2s qos_algorithm_type*:s qos_algorithm_params*:s2s
        qos_supported_algorithms:s[] metrics:@VIF_metrics MAC_autogenerated:b locking_mode^:vif_locking_mode
        ipv4_allowed^:s[] ipv6_allowed^:s[] ipv4_configuration_mode:vif_ipv4_configuration_mode
        ipv4_addresses:s[] ipv4_gateway:s ipv6_configuration_mode:vif_ipv6_configuration_mode
        ipv6_addresses:s[] ipv6_gateway:s""",
    "VIF_metrics": """
        uuid:s io_read_kbs:f io_write_kbs:f last_updated:dt other_config*:s2s""",
    "VLAN": """
        uuid:s tagged_PIF^:@PIF untagged_PIF:@PIF tag^:i other_config*:s2s""",
    "tunnel": """
        uuid:s access_PIF^:@PIF transport_PIF^:@PIF status*:s2s other_config*:s2s protocol*:tunnel_protocol""",
    "Bond": """
        uuid:s master^:@PIF slaves:@PIF[] other_config*:s2s primary_slave:@PIF mode:bond_mode properties:s2s
        links_up:i auto_update_mac:b""",
    "VM": """
        uuid:s allowed_operations:vm_operations[] current_operations:{s:vm_operations} name_label*:s
        name_description*:s power_state^:vm_power_state user_version*:i is_a_template*:b is_default_template:b
        suspend_VDI^:@VDI resident_on:@host scheduled_to_be_resident_on:@host affinity*:@host memory_overhead:i
        memory_target^:i memory_static_max^:i memory_dynamic_max^:i memory_dynamic_min^:i memory_static_min^:i
        VCPUs_params*:s2s VCPUs_max^:i VCPUs_at_startup^:i actions_after_softreboot*:on_softreboot_behavior
        actions_after_shutdown*:on_normal_exit actions_after_reboot*:on_normal_exit
        actions_after_crash^:on_crash_behaviour consoles:@console[] VIFs:@VIF[] VBDs:@VBD[] VUSBs:@VUSB[]
        crash_dumps:@crashdump[] VTPMs:@VTPM[] PV_bootloader*:s PV_kernel*:s PV_ramdisk*:s PV_args*:s
        PV_bootloader_args*:s PV_legacy_args*:s HVM_boot_policy^:s HVM_boot_params*:s2s HVM_shadow_multiplier^:f
        platform*:s2s PCI_bus*:s other_config*:s2s domid:i domarch:s last_boot_CPU_flags^:s2s
        is_control_domain:b metrics:@VM_metrics guest_metrics:@VM_guest_metrics last_booted_record^:s
        recommendations*:s xenstore_data*:s2s ha_always_run^:b ha_restart_priority^:s is_a_snapshot:b
        snapshot_of:@VM snapshots:@VM[] snapshot_time:dt transportable_snapshot_id:s blobs:{s:@blob} tags*:s[]
        blocked_operations*:{vm_operations:s} snapshot_info:s2s snapshot_metadata:s parent:@VM children:@VM[]
        bios_strings:s2s protection_policy^:@VMPP is_snapshot_from_vmpp^:b snapshot_schedule^:@VMSS
        is_vmss_snapshot^:b appliance^:@VM_appliance start_delay^:i shutdown_delay^:i order^:i VGPUs:@VGPU[]
        attached_PCIs:@PCI[] suspend_SR*:@SR version^:i generation_id^:s hardware_platform_version*:i
        has_vendor_device^:b requires_reboot:b reference_label^:s domain_type^:domain_type NVRAM^:s2s
        pending_guidances:update_guidances[] pending_guidances_recommended:update_guidances[]
        pending_guidances_full:update_guidances[] groups:@VM_group[]
        secureboot_certificates_state:vm_secureboot_certificates_state""",
    "VM_metrics": """
        uuid:s memory_actual:i VCPUs_number:i VCPUs_utilisation:{i:f} VCPUs_CPU:{i:i} VCPUs_params:s2s
        VCPUs_flags:{i:s[]} state:s[] start_time:dt install_time:dt last_updated:dt other_config*:s2s hvm:b
        nested_virt:b nomigrate:b current_domain_type:domain_type numa_optimised^:b numa_nodes^:i
        numa_node_memory:{i:i}""",
    "VM_guest_metrics": """
        uuid:s os_version:s2s PV_drivers_version:s2s PV_drivers_up_to_date:b memory:s2s disks:s2s networks:s2s
        other:s2s last_updated:dt other_config*:s2s live:b can_use_hotplug_vbd:tristate_type
        can_use_hotplug_vif:tristate_type PV_drivers_detected:b netbios_name:s2s services:s2s""",
    "console": """
        uuid:s protocol:console_protocol location:s VM:@VM other_config*:s2s""",
    "task": """
        uuid:s name_label:s name_description:s allowed_operations:task_allowed_operations[]
        current_operations:{s:task_allowed_operations} created:dt finished:dt status:task_status_type
        resident_on:@host progress:f type:s result:s error_info:s[] other_config*:s2s subtask_of:@task
        subtasks:@task[] backtrace:s""",
    "event": """
        snapshot:record id^:i timestamp^:dt class^:s operation^:event_operation ref^:s obj_uuid^:s""",
    "role": """
        uuid:s name_label^:s name_description^:s subroles^:@role[] is_internal:b""",
    "user": """
        uuid:s short_name^:s fullname*:s other_config*:s2s""",
}

# Fields this server adds to a xapi class (its own extensions, documented in docs/api-reference.md).
EXTENSIONS = {
    ("pool", "suggested_profiles"), ("VM", "profiles"), ("host", "nic_speeds"), ("user", "groups"),
    ("network", "bandwidth"), ("network", "latency"),
}

# Classes of this server's own, with no xapi counterpart.
OWN_CLASSES = {"grant", "audit", "security_group"}

# xapi fields not declared yet, and what they wait for.  The test fails once one is declared, so
# that this list shrinks.
NOT_YET: dict[tuple[str, str], str] = {
}

# Where a declaration here deliberately differs from xapi's qualifier or type, and why.
DIFFERENCES = {
    ("VM", "power_state"): "observed from libvirt, never given: VM.create makes a Halted VM",
    ("VM", "HVM_boot_policy"): "xapi has a hand-written VM.set_HVM_boot_policy; here the setter is derived",
    ("pool", "uefi_certificates"): "no UEFI certificate store yet: read-only",
    ("host", "uefi_certificates"): "no UEFI certificate store yet: read-only",
    ("pool", "is_psr_pending"): "no pool secret rotation: read-only",
    **{("event", f): "events are built by the server, never by a constructor: the qualifier is moot "
                     "(and operation, add, mod or del, is declared a string)"
       for f in ("id", "timestamp", "class", "operation", "ref", "obj_uuid")},
}

# event.snapshot is the one untyped field: xapi documents it as "<class> record"
_SCALARS = {T.String: "s", T.Int: "i", T.Bool: "b", T.Float: "f", T.Timestamp: "dt", T.Any_: "record"}


def _notation(t: T.WireType) -> str:
    if isinstance(t, T.Set):
        return _notation(t.of) + "[]"
    if isinstance(t, T.Map):
        key, value = _notation(t.key), _notation(t.value)
        return "s2s" if (key, value) == ("s", "s") else f"{{{key}:{value}}}"
    if isinstance(t, T.Ref):
        return "@" + t.cls
    if isinstance(t, T.Enum):
        return t.name
    return _SCALARS[t]


def _declared(cls: str) -> dict[str, str]:
    """name -> "qualifier:type" as the class declares it."""
    qual = {RW: "*", CTOR: "^"}
    return {f.name: qual.get(f.qualifier, "") + ":" + _notation(f.type) for f in REGISTRY.classes[cls].fields}


def _xapi(cls: str) -> dict[str, str]:
    out = {}
    for token in XAPI_FIELDS[cls].split():
        name, _, type_ = token.partition(":")
        qual = name[-1] if name[-1] in "*^" else ""
        out[name.rstrip("*^")] = f"{qual}:{type_}"
    return out


def test_every_class_is_xapis_or_our_own():
    assert set(REGISTRY.classes) == set(XAPI_FIELDS) | OWN_CLASSES


@pytest.mark.parametrize("cls", sorted(XAPI_FIELDS))
def test_class_declares_every_field_of_xapis_record(cls):
    declared, xapi = _declared(cls), _xapi(cls)
    missing = {f for f in xapi if f not in declared}
    assert missing == {f for c, f in NOT_YET if c == cls}, f"{cls} lacks xapi's fields {sorted(missing)}"
    assert {f for f in declared if f not in xapi} == {f for c, f in EXTENSIONS if c == cls}


@pytest.mark.parametrize("cls", sorted(XAPI_FIELDS))
def test_class_declares_xapis_type_and_qualifier(cls):
    declared, xapi = _declared(cls), _xapi(cls)
    differ = {f: (declared[f], xapi[f]) for f in xapi if f in declared and declared[f] != xapi[f]}
    assert set(differ) == {f for c, f in DIFFERENCES if c == cls}, differ


def test_enums_of_the_new_fields_are_xapis():
    assert ENUMS["host_numa_affinity_policy"].values == ("any", "best_effort", "default_policy")
    assert ENUMS["host_ntp_mode"].values == ("DHCP", "Custom", "Factory", "Disabled")
    assert ENUMS["vm_secureboot_certificates_state"].values == ("ok", "update_available", "update_on_boot")


@pytest.mark.parametrize("cls, field, default", [
    ("VM", "secureboot_certificates_state", "ok"), ("host", "numa_affinity_policy", "default_policy"),
    ("host", "ssh_enabled", True), ("host", "ntp_mode", "Factory"), ("host", "timezone", "UTC"),
    ("pool", "local_auth_max_threads", 8), ("pool", "ext_auth_max_threads", 1),
    ("pool", "ext_auth_cache_enabled", True), ("pool", "ext_auth_cache_size", 50),
    ("pool", "ext_auth_cache_expiry", 300), ("pool", "ha_reboot_vm_on_internal_shutdown", True),
    ("pool", "limit_console_sessions", False), ("VM_metrics", "numa_nodes", 0),
])
def test_new_field_has_xapis_default(cls, field, default):
    assert REGISTRY.classes[cls].field(field).empty() == default


_GUIDANCES = ("pending_guidances", "pending_guidances_recommended", "pending_guidances_full")


def test_vm_and_host_records_carry_every_guidance_over_xmlrpc(xapi):
    for cls in (xapi.xenapi.VM, xapi.xenapi.host):
        for rec in cls.get_all_records().values():
            assert all(rec[f] == [] for f in _GUIDANCES), rec
    vm = next(iter(xapi.xenapi.VM.get_all()))
    assert xapi.xenapi.VM.get_pending_guidances_full(vm) == []
    assert xapi.xenapi.VM.get_pending_guidances_recommended(vm) == []


def test_vm_and_host_records_carry_every_guidance_over_jsonrpc(wire, session):
    for cls in ("VM", "host"):
        records = wire.json(f"{cls}.get_all_records", [session]).json()["result"]
        assert records
        for rec in records.values():
            assert all(rec[f] == [] for f in _GUIDANCES), rec


@pytest.mark.parametrize("cls", ["VM", "host", "pool", "VM_metrics", "host_metrics", "host_cpu"])
def test_records_over_the_wire_have_exactly_the_declared_fields(xapi, cls):
    records = getattr(xapi.xenapi, cls).get_all_records()
    assert records
    for rec in records.values():
        assert set(rec) == set(_declared(cls))
