"""host: one per libvirt connection.  Its facts come from libvirt; its settings from the store."""
import time

from classes.enums import ENUMS
from classes.vm_placement import HOST_MESSAGES
from xenapi.model import types as T
from xenapi.model.declare import declare_class, fields, message, param
from xenapi import errors as E
from xenapi.model.roles import POOL_OP, READ_ONLY
from xenapi.model.types import NULL_REF
from xenapi.wire.values import DateTime

# The API level of xapi whose wire protocol this server follows (ocaml/idl/api_version.ml).
API_VERSION_MAJOR, API_VERSION_MINOR = 2, 21

_HOST = param(T.Ref("host"), "host", "The host")


_FACTS = "see docs/host-facts.md"
_DOCS = {
    "software_version": "Versions (map): xapi's product_* keys; hypervisor and hypervisor_version (libvirt getType/"
                        "getVersion), libvirt (the daemon's getLibVersion), libvirt_uri, virt_types (capabilities' "
                        "guest domain types, e.g. \"kvm qemu\"), kvm_usable, detected_hypervisor (this machine: "
                        f"xen, kvm or qemu; empty for other hosts); {_FACTS}",
    "capabilities": "Guest ABIs, xapi style (hvm-3.0-x86_64, hvm-3.0-x86_32p, xen-3.0-x86_64), from libvirt's "
                    f"guest capabilities (os_type, arch, PAE); {_FACTS}",
    "cpu_info": "CPU and NUMA facts as strings: xapi's cpu_count, socket_count, threads_per_core, nr_nodes, vendor "
                "(GenuineIntel...), speed (MHz), modelname (brand string), family, model, stepping, flags "
                "(libvirt feature names, space separated); plus cores_per_socket, libvirt_model, arch and per NUMA "
                f"node numa_nodeN_memory, numa_nodeN_free (bytes), numa_nodeN_cpus; {_FACTS}",
    "chipset_info": "iommu (capabilities), tpm (true when a guest can have a TPM) and tpm_backends (emulator: "
                    f"swtpm; passthrough: a host TPM); {_FACTS}",
    "nic_speeds": "Physical NIC name -> link speed in Mbit/s, or unknown (libvirt's node devices, else this "
                  f"machine's /sys/class/net); a server fact, unlike other_config; {_FACTS}",
    "host_CPUs": "One host_cpu per logical CPU (libvirt's node info)",
    "metrics": "Memory figures (host_metrics), refreshed every [metrics] interval",
    "hostname": "libvirt's getHostname",
    "address": "The host part of the libvirt URI, 127.0.0.1 for a local one",
    "API_version_vendor_implementation": "libvirt_uri: the host's libvirt URI",
}


def compute_free_memory(ctx, host):
    return ctx.services.hosts.free_memory(host)


def compute_memory_overhead(ctx, host):
    return ctx.store.get("host", host)["memory_overhead"]


def get_servertime(ctx, host):
    return DateTime.now()


def get_server_localtime(ctx, host):
    return DateTime(time.time() + time.localtime().tm_gmtoff)


def list_methods(ctx, host):
    return ctx.services.registry.list_methods()


def evacuate(ctx, host, network, evacuate_batch_size):
    ctx.services.evacuation.evacuate(ctx, host, network, evacuate_batch_size)


def get_vms_which_prevent_evacuation(ctx, self):
    return ctx.services.evacuation.preventing(ctx, self)


def assert_can_evacuate(ctx, host):
    ctx.services.evacuation.assert_can(ctx, host)


_EVACUATION_REASONS = (E.NO_HOSTS_AVAILABLE, E.HOST_NOT_ENOUGH_FREE_MEMORY, E.VM_INCOMPATIBLE_WITH_THIS_HOST,
                       E.VM_REQUIRES_SR, E.VM_REQUIRES_NETWORK, E.OPERATION_NOT_ALLOWED, E.VM_BAD_POWER_STATE)
_EVACUATION_DOC = ("the plan (xenapi/services/evacuation.py): every VM running there, and every halted VM defined "
                   "there, must pass the migration's checks on some other enabled, live host, with memory "
                   "bin-packed across those hosts")


host = declare_class(
    "host", "A physical host: one libvirt connection (KVM/QEMU, Xen, LXC or libvirt's test driver).",
    fields("""uuid:s name_label*:s name_description*:s memory_overhead:i
              allowed_operations:host_allowed_operations[] current_operations:{s:host_allowed_operations}
              API_version_major:i API_version_minor:i API_version_vendor:s API_version_vendor_implementation:s2s
              enabled:b software_version^:s2s other_config*:s2s capabilities^:s[] cpu_configuration:s2s
              sched_policy:s supported_bootloaders:s[] resident_VMs:@VM[] logging*:s2s PIFs:@PIF[]
              suspend_image_sr*:@SR crash_dump_sr*:@SR crashdumps:@host_crashdump[] !patches:@host_patch[]
              updates:@pool_update[] PBDs:@PBD[] host_CPUs:@host_cpu[] cpu_info:s2s hostname*:s address*:s
              metrics:@host_metrics license_params:s2s ha_statefiles:s[] ha_network_peers:s[] blobs:{s:@blob}
              tags*:s[] external_auth_type:s external_auth_service_name:s external_auth_configuration:s2s
              edition:s license_server*:s2s bios_strings:s2s power_on_mode:s power_on_config:s2s
              local_cache_sr^:@SR chipset_info:s2s PCIs:@PCI[] PGPUs:@PGPU[] PUSBs:@PUSB[] !ssl_legacy^:b
              guest_VCPUs_params*:s2s display*:host_display virtual_hardware_platform_versions:i[]
              control_domain:@VM updates_requiring_reboot:@pool_update[] features:@Feature[] iscsi_iqn^:s
              multipathing^:b uefi_certificates:s certificates:@Certificate[] editions:s[]
              pending_guidances:update_guidances[] tls_verification_enabled:b last_software_update:dt
              https_only:b latest_synced_updates_applied:latest_synced_updates_applied_state
              ?numa_affinity_policy:host_numa_affinity_policy ?pending_guidances_recommended:update_guidances[]
              ?pending_guidances_full:update_guidances[] ?last_update_hash:s ?ssh_enabled:b ?ssh_enabled_timeout:i
              ?ssh_expiry:dt ?console_idle_timeout:i ?ssh_auto_mode:b ?max_cstate:s ?secure_boot:b
              ?ntp_mode:host_ntp_mode ?ntp_custom_servers:s[] ?timezone:s nic_speeds:s2s""", ENUMS,
           defaults={"API_version_major": API_VERSION_MAJOR, "API_version_minor": API_VERSION_MINOR,
                     "API_version_vendor": "xenapi", "enabled": True, "edition": "xenapi", "editions": ["xenapi"],
                     "display": "enabled", "sched_policy": "credit", "power_on_mode": "",
                     "virtual_hardware_platform_versions": [0], "latest_synced_updates_applied": "unknown",
                     "license_server": {"address": "localhost", "port": "27000"},
                     # xapi's defaults (ocaml/xapi-consts/constants.ml), as a freshly installed host has them
                     "numa_affinity_policy": "default_policy", "ssh_enabled": True, "ntp_mode": "Factory",
                     "timezone": "UTC"}, docs=_DOCS),
    [
        *HOST_MESSAGES,
        message("compute_free_memory", "Computes the amount of free memory on the host, in bytes (libvirt's getFreeMemory, read now).",
                params=[_HOST], result=T.Int, impl=compute_free_memory, changes_nothing=True),
        message("compute_memory_overhead", "Computes the virtualization memory overhead of a host.",
                params=[_HOST], result=T.Int, impl=compute_memory_overhead, changes_nothing=True),
        message("get_servertime", "This call queries the host's clock for the current time.",
                params=[_HOST], result=T.Timestamp, impl=get_servertime),
        message("get_server_localtime", "This call queries the host's clock for the current time in the host's local timezone.",
                params=[_HOST], result=T.Timestamp, impl=get_server_localtime),
        message("list_methods", "List all supported methods.", params=[_HOST], result=T.Set(T.String),
                impl=list_methods, roles=READ_ONLY, changes_nothing=True),
        message("evacuate", "Migrate all VMs off of this host, where possible: running VMs live, halted VMs "
                f"defined there cold, evacuate_batch_size at a time. Refused, with nothing moved, unless {_EVACUATION_DOC} "
                "(the first VM's reason is raised). Does not disable the host: call host.disable first.",
                params=[_HOST, param(T.Ref("network"), "network", "Optional preferred network for migration "
                                     "(checked to exist; libvirt's [migrate_uri] decides the path)", default=NULL_REF),
                        param(T.Int, "evacuate_batch_size", "The maximum number of VMs to be migrated per batch "
                              "(0 or less: 10)", default=0)],
                impl=evacuate, roles=POOL_OP, is_async=True,
                errors=(*_EVACUATION_REASONS, E.OTHER_OPERATION_IN_PROGRESS, E.TASK_CANCELLED)),
        message("get_vms_which_prevent_evacuation", "Return a set of VMs which prevent the host being evacuated, "
                f"with per-VM error codes ({_EVACUATION_DOC}): VM -> [code, params...]; empty when it can be.",
                params=[param(T.Ref("host"), "self", "The host to query")],
                result=T.Map(T.Ref("VM"), T.Set(T.String)), impl=get_vms_which_prevent_evacuation,
                roles=READ_ONLY, is_async=True, changes_nothing=True),
        message("assert_can_evacuate", "Check this host can be evacuated: raises CANNOT_EVACUATE_HOST "
                "[\"CODE,param,...|CODE,...\"] (each VM that prevents it, xapi's encoding) unless "
                f"{_EVACUATION_DOC}.",
                params=[_HOST], impl=assert_can_evacuate, roles=READ_ONLY, is_async=True, changes_nothing=True,
                errors=(E.CANNOT_EVACUATE_HOST,)),
    ],
    writer_roles=POOL_OP, persisted=True,
)
