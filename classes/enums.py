"""Every enumeration of the API, spelt as xapi spells it (emitted exactly so, parsed in any case)."""
from xenapi.model.declare import enum

_ALL = [
    enum("vm_power_state", "Halted Paused Running Suspended"),
    enum("vm_operations", """snapshot clone copy create_template revert checkpoint snapshot_with_quiesce provision start
        start_on pause unpause clean_shutdown clean_reboot hard_shutdown power_state_reset hard_reboot suspend csvm
        resume resume_on pool_migrate migrate_send get_boot_record send_sysrq send_trigger query_services shutdown
        call_plugin changing_memory_live awaiting_memory_live changing_dynamic_range changing_static_range
        changing_memory_limits changing_shadow_memory changing_shadow_memory_live changing_VCPUs changing_VCPUs_live
        changing_NVRAM assert_operation_valid data_source_op update_allowed_operations make_into_template import
        export metadata_export reverting destroy create_vtpm"""),
    enum("on_normal_exit", "destroy restart"),
    enum("on_crash_behaviour", "destroy coredump_and_destroy restart coredump_and_restart preserve rename_restart"),
    enum("on_softreboot_behavior", "soft_reboot destroy restart preserve"),
    enum("domain_type", "hvm pv pv_in_pvh pvh unspecified"),
    enum("update_guidances", "reboot_host reboot_host_on_livepatch_failure reboot_host_on_kernel_livepatch_failure "
         "reboot_host_on_xen_livepatch_failure restart_toolstack restart_device_model restart_vm"),
    enum("tristate_type", "yes no unspecified"),
    enum("task_status_type", "pending success failure cancelling cancelled"),
    enum("task_allowed_operations", "cancel destroy"),
    enum("host_allowed_operations", "provision evacuate shutdown reboot power_on vm_start vm_resume vm_migrate "
         "apply_updates enable"),
    enum("host_display", "enabled disable_on_reboot disabled enable_on_reboot"),
    enum("host_sched_gran", "core cpu socket"),
    enum("latest_synced_updates_applied_state", "yes no unknown"),
    enum("host_numa_affinity_policy", "any best_effort default_policy"),
    enum("host_ntp_mode", "DHCP Custom Factory Disabled"),
    enum("vm_secureboot_certificates_state", "ok update_available update_on_boot"),
    enum("pool_allowed_operations", "ha_enable ha_disable cluster_create designate_new_master configure_repositories "
         "sync_updates get_updates apply_updates tls_verification_enable cert_refresh exchange_certificates_on_join "
         "exchange_ca_certificates_on_join copy_primary_host_certs eject"),
    enum("console_protocol", "vt100 rfb rdp"),
    enum("storage_operations", "scan destroy forget plug unplug update vdi_create vdi_introduce vdi_destroy vdi_resize "
         "vdi_clone vdi_snapshot vdi_mirror vdi_enable_cbt vdi_disable_cbt vdi_data_destroy vdi_list_changed_blocks "
         "vdi_set_on_boot pbd_create pbd_destroy"),
    enum("vdi_operations", "clone copy resize resize_online snapshot mirror destroy forget update force_unlock "
         "generate_config enable_cbt disable_cbt data_destroy list_changed_blocks set_on_boot blocked"),
    enum("vdi_type", "system user ephemeral suspend crashdump ha_statefile metadata redo_log rrd pvs_cache cbt_metadata"),
    enum("on_boot", "reset persist"),
    enum("vbd_operations", "attach eject insert plug unplug unplug_force pause unpause"),
    enum("vbd_type", "CD Disk Floppy"),
    enum("vbd_mode", "RO RW"),
    enum("network_operations", "attaching"),
    enum("network_default_locking_mode", "unlocked disabled"),
    enum("network_purpose", "nbd insecure_nbd"),
    enum("vif_operations", "attach plug unplug"),
    enum("vif_locking_mode", "network_default locked unlocked disabled"),
    enum("vif_ipv4_configuration_mode", "None Static"),
    enum("vif_ipv6_configuration_mode", "None Static"),
    enum("ip_configuration_mode", "None DHCP Static"),
    enum("ipv6_configuration_mode", "None DHCP Static Autoconf"),
    enum("primary_address_type", "IPv4 IPv6"),
    enum("pif_igmp_status", "enabled disabled unknown"),
    enum("tunnel_protocol", "gre vxlan"),
    enum("bond_mode", "balance-slb active-backup lacp"),
    enum("telemetry_frequency", "daily weekly monthly"),
    enum("update_sync_frequency", "daily weekly"),
]

ENUMS = {e.name: e for e in _ALL}
