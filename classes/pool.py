"""pool: exactly one, whose master is the first host.  It also carries the draft's VM profiles."""
from classes.enums import ENUMS
from classes.network_messages import networking
from xenapi import errors as E
from xenapi.model import types as T
from xenapi.model.declare import declare_class, fields, message, param
from xenapi.model.roles import POOL_ADMIN, POOL_OP

# The Xen-API draft's example profiles; administrators add their own.
SUGGESTED_PROFILES = ["web-server", "sendmail-switch", "dbms-host", "devel-workstation"]


def get_license_state(ctx, self):
    return {"edition": "xenapi", "expiry": "never"}


def add_host(ctx, pool, uri):
    return ctx.services.hosts.add(uri)


def remove_host(ctx, pool, host):
    ctx.services.hosts.remove(host)


_POOL = param(T.Ref("pool"), "pool", "The pool")


pool = declare_class(
    "pool", "Pool-wide information. A xenapi deployment is one pool of the libvirt hosts it manages.",
    fields("""uuid:s name_label*:s name_description*:s master:@host default_SR*:@SR suspend_image_SR*:@SR
              crash_dump_SR*:@SR other_config*:s2s ha_enabled:b ha_configuration:s2s ha_statefiles:s[]
              ha_host_failures_to_tolerate:i ha_plan_exists_for:i ha_allow_overcommit*:b ha_overcommitted:b
              blobs:{s:@blob} tags*:s[] gui_config*:s2s health_check_config*:s2s wlb_url:s wlb_username:s
              wlb_enabled*:b wlb_verify_cert*:b redo_log_enabled:b redo_log_vdi:@VDI vswitch_controller:s
              restrictions:s2s metadata_VDIs:@VDI[] ha_cluster_stack:s
              allowed_operations:pool_allowed_operations[] current_operations:{s:pool_allowed_operations}
              guest_agent_config:s2s cpu_info:s2s policy_no_vendor_device*:b live_patching_disabled*:b
              igmp_snooping_enabled:b uefi_certificates:s ?custom_uefi_certificates^:s is_psr_pending:b
              tls_verification_enabled:b
              repositories:@Repository[] client_certificate_auth_enabled:b client_certificate_auth_name:s
              repository_proxy_url:s repository_proxy_username:s repository_proxy_password:@secret
              migration_compression*:b coordinator_bias*:b ?local_auth_max_threads^:i ?ext_auth_max_threads^:i
              ?ext_auth_cache_enabled:b ?ext_auth_cache_size:i ?ext_auth_cache_expiry:i telemetry_uuid:@secret
              telemetry_frequency:telemetry_frequency telemetry_next_collection:dt last_update_sync:dt
              update_sync_frequency:update_sync_frequency update_sync_day:i update_sync_enabled:b
              ?recommendations:s2s ?license_server*:s2s ?ha_reboot_vm_on_internal_shutdown*:b
              ?limit_console_sessions*:b ?vm_console_idle_timeout*:i ?auto_update_vm_secureboot_certificates*:b
              suggested_profiles*:s[]""", ENUMS,
           defaults={"suggested_profiles": SUGGESTED_PROFILES, "ha_cluster_stack": "xhad",
                     "telemetry_frequency": "weekly", "update_sync_frequency": "weekly", "coordinator_bias": True,
                     # xapi's defaults (datamodel_pool.ml)
                     "local_auth_max_threads": 8, "ext_auth_max_threads": 1, "ext_auth_cache_enabled": True,
                     "ext_auth_cache_size": 50, "ext_auth_cache_expiry": 300,
                     "ha_reboot_vm_on_internal_shutdown": True},
           docs={"suggested_profiles": "VM profiles offered to administrators (the Xen-API draft's profiles); any string may be used on a VM."}),
    [
        message("get_license_state", "This call returns the license state for the pool.",
                params=[param(T.Ref("pool"), "self", "Reference to the pool")], result=T.S2S, impl=get_license_state),
        message("create_VLAN_from_PIF", "Create a pool-wide VLAN by taking the PIF (a VLAN on every live host's "
                "PIF of that PIF's network; all undone if one host fails).",
                params=[param(T.Ref("PIF"), "pif", "physical interface on any particular host, that identifies the "
                              "PIF on which to create the (pool-wide) VLAN interface"),
                        param(T.Ref("network"), "network", "network to which this interface should be connected"),
                        param(T.Int, "VLAN", "VLAN tag for the new interface")],
                result=T.Set(T.Ref("PIF")), impl=networking("create_vlan_from_pif"), roles=POOL_OP, is_async=True,
                errors=(E.VLAN_TAG_INVALID, E.PIF_VLAN_EXISTS, E.OPERATION_NOT_ALLOWED, E.HOST_OFFLINE)),
        message("add_host", "Add a host to the pool by its libvirt URI (this server's counterpart of xapi's "
                "pool.join): the server connects to it, checks it runs the pool's hypervisor type "
                "(pool.other_config:hypervisor, libvirt getType()), publishes its host, host_metrics, host_cpu, "
                "control domain, PIFs and PBDs, lists its VMs, and keeps it across restarts. Nothing of a host "
                "refused stays.",
                params=[_POOL, param(T.String, "uri", "The host's libvirt URI (qemu+tcp://host/system, test:///path...)")],
                result=T.Ref("host"), impl=add_host, roles=POOL_ADMIN, is_async=True,
                errors=(E.POOL_JOINING_HOST_CONNECTION_FAILED, E.POOL_HOSTS_NOT_HOMOGENEOUS, E.OPERATION_NOT_ALLOWED)),
        message("remove_host", "Remove a host added with pool.add_host (this server's counterpart of xapi's "
                "pool.eject): refused while a VM is resident or defined there, or a VM uses a disk only it "
                "reaches (HOST_IN_USE), and for a host of the server's configuration; else its connection "
                "closes and its records go (host, host_metrics, host_cpu, control domain, PIFs, PBDs, and the "
                "SRs and networks only it had). The VMs and disks on it stay on the host's libvirt.",
                params=[_POOL, param(T.Ref("host"), "host", "The host to remove")],
                impl=remove_host, roles=POOL_ADMIN, is_async=True,
                errors=(E.HOST_IN_USE, E.OPERATION_NOT_ALLOWED)),
    ],
    writer_roles=POOL_OP, persisted=True,
)
