"""The API's classes, one module each; ``REGISTRY`` is built (and checked) from them at import."""
from classes.audit import audit
from classes.console import console
from classes.event import event
from classes.grant import grant
from classes.host import host
from classes.host_cpu import host_cpu
from classes.host_metrics import host_metrics
from classes.network import network
from classes.pbd import PBD
from classes.pif import PIF, PIF_metrics
from classes.pool import pool
from classes.role import role
from classes.security_group import security_group
from classes.session import session
from classes.sm import SM
from classes.sr import SR
from classes.task import task
from classes.user import user
from classes.vbd import VBD
from classes.vdi import VDI
from classes.vif import VIF, VIF_metrics
from classes.vlan import VLAN, Bond, tunnel
from classes.vm import VM
from classes.vm_metrics import VM_guest_metrics, VM_metrics
from xenapi.model.declare import relations
from xenapi.model.registry import Registry

DECLARATIONS = [session, pool, host, host_metrics, host_cpu, VM, VM_metrics, VM_guest_metrics, console, SR, PBD,
                VDI, VBD, SM, network, PIF, PIF_metrics, VIF, VIF_metrics, VLAN, tunnel, Bond, security_group, task, event,
                role, user, grant, audit]

# xapi's relations (ocaml/idl/datamodel.ml, all_relations) between the classes declared: the ref
# on the left is what gets written, the set on the right is kept from it by the store.
RELATIONS = relations("""
    VM.resident_on     host.resident_VMs
    host_cpu.host      host.host_CPUs
    console.VM         VM.consoles
    VM.snapshot_of     VM.snapshots
    VM.parent          VM.children
    task.subtask_of    task.subtasks
    VBD.VM             VM.VBDs
    VBD.VDI            VDI.VBDs
    VDI.SR             SR.VDIs
    VDI.snapshot_of    VDI.snapshots
    VDI.metadata_of_pool  pool.metadata_VDIs
    PBD.SR             SR.PBDs
    PBD.host           host.PBDs
    VIF.VM             VM.VIFs
    VIF.network        network.VIFs
    PIF.network        network.PIFs
    PIF.host           host.PIFs
    PIF.bond_slave_of  Bond.slaves
    Bond.master        PIF.bond_master_of
    VLAN.tagged_PIF    PIF.VLAN_slave_of
    tunnel.access_PIF     PIF.tunnel_access_PIF_of
    tunnel.transport_PIF  PIF.tunnel_transport_PIF_of
""")
# Sets of refs that are no relation's side: role.subroles is many to many (the role ladder),
# xapi keeps session.tasks from a task field it does not publish, and security_group.VIFs is many
# to many (xenapi/services/security_groups.py keeps it when a VIF goes).
UNRELATED = ("role.subroles", "session.tasks", "security_group.VIFs")

REGISTRY = Registry(DECLARATIONS, RELATIONS, UNRELATED)
