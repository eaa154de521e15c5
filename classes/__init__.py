"""The API's classes, one module each; ``REGISTRY`` is built (and checked) from them at import."""
from classes.audit import audit
from classes.console import console
from classes.event import event
from classes.grant import grant
from classes.host import host
from classes.host_cpu import host_cpu
from classes.host_metrics import host_metrics
from classes.pool import pool
from classes.role import role
from classes.session import session
from classes.task import task
from classes.user import user
from classes.vm import VM
from classes.vm_metrics import VM_guest_metrics, VM_metrics
from xenapi.model.registry import Registry

DECLARATIONS = [session, pool, host, host_metrics, host_cpu, VM, VM_metrics, VM_guest_metrics, console, task,
                event, role, user, grant, audit]

REGISTRY = Registry(DECLARATIONS)
