"""Xen-API errors: every code declared once, with its parameter names.

Code raises ``XenAPIError(CODE, *params)``; only the wire codecs turn it into an envelope
(``{Status: Failure, ErrorDescription: [CODE, params...]}``).  Parameters are stringified on
the way in, as xapi sends every ErrorDescription element as a string.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorCode:
    name: str
    params: tuple[str, ...]
    doc: str


ERRORS: dict[str, ErrorCode] = {}


def _declare(name: str, params: str, doc: str) -> str:
    ERRORS[name] = ErrorCode(name, tuple(params.split()), doc)
    return name


# Sessions and dispatch
SESSION_AUTHENTICATION_FAILED = _declare("SESSION_AUTHENTICATION_FAILED", "uname msg", "The credentials given by the user are incorrect.")
SESSION_AUTHORIZATION_FAILED = _declare("SESSION_AUTHORIZATION_FAILED", "uname msg", "The user is authenticated but has no role.")
SESSION_INVALID = _declare("SESSION_INVALID", "handle", "You gave an invalid session reference: it never existed, was logged out or expired.")
SESSION_NOT_REGISTERED = _declare("SESSION_NOT_REGISTERED", "handle", "This session is not registered to receive events.")
MESSAGE_METHOD_UNKNOWN = _declare("MESSAGE_METHOD_UNKNOWN", "method", "You tried to call a method that does not exist.")
MESSAGE_PARAMETER_COUNT_MISMATCH = _declare("MESSAGE_PARAMETER_COUNT_MISMATCH", "method expected received", "You tried to call a method with the wrong number of parameters (counts exclude the session).")
RBAC_PERMISSION_DENIED = _declare("RBAC_PERMISSION_DENIED", "permission message", "Your session's roles do not allow this call.")
PERMISSION_DENIED = _declare("PERMISSION_DENIED", "message", "Caller not allowed to perform this operation.")
USER_IS_NOT_LOCAL_SUPERUSER = _declare("USER_IS_NOT_LOCAL_SUPERUSER", "msg", "Only the local superuser can perform this operation.")
XMLRPC_UNMARSHAL_FAILURE = _declare("XMLRPC_UNMARSHAL_FAILURE", "expected received", "The server failed to unmarshal the request; it was expecting one element and received something else (a broken document on a stdio or SSH stream).")
INTERNAL_ERROR = _declare("INTERNAL_ERROR", "message", "The server failed to handle your request; the log has the details under the given id.")
NOT_IMPLEMENTED = _declare("NOT_IMPLEMENTED", "function", "The function is not implemented.")
TOO_BUSY = _declare("TOO_BUSY", "", "The request was rejected because the server is too busy.")
EVENTS_LOST = _declare("EVENTS_LOST", "", "Some events have been lost; unregister, register and re-read the state.")
EVENT_FROM_TOKEN_PARSE_FAILURE = _declare("EVENT_FROM_TOKEN_PARSE_FAILURE", "token", "The event.from token could not be parsed.")
EVENT_SUBSCRIPTION_PARSE_FAILURE = _declare("EVENT_SUBSCRIPTION_PARSE_FAILURE", "subscription", "The server failed to parse your event subscription.")
# Values and objects
HANDLE_INVALID = _declare("HANDLE_INVALID", "class handle", "You gave an invalid object reference.")
UUID_INVALID = _declare("UUID_INVALID", "type uuid", "The uuid you supplied was invalid.")
FIELD_TYPE_ERROR = _declare("FIELD_TYPE_ERROR", "field", "The value given for a field or parameter has the wrong type.")
INVALID_VALUE = _declare("INVALID_VALUE", "field value", "The value given is invalid.")
VALUE_NOT_SUPPORTED = _declare("VALUE_NOT_SUPPORTED", "field value reason", "You attempted to set a value that is not supported by this implementation.")
MAP_DUPLICATE_KEY = _declare("MAP_DUPLICATE_KEY", "type param_name uuid key", "You tried to add a key-value pair to a map, but that key is already there.")
OPERATION_NOT_ALLOWED = _declare("OPERATION_NOT_ALLOWED", "reason", "You attempted an operation that was not allowed.")
OPERATION_BLOCKED = _declare("OPERATION_BLOCKED", "ref code", "You attempted an operation that was explicitly blocked.")
OTHER_OPERATION_IN_PROGRESS = _declare("OTHER_OPERATION_IN_PROGRESS", "class object operation_type operation_ref", "Another operation involving the object is currently in progress.")
TASK_CANCELLED = _declare("TASK_CANCELLED", "task", "The request was asynchronously cancelled.")
MEMORY_CONSTRAINT_VIOLATION = _declare("MEMORY_CONSTRAINT_VIOLATION", "constraint", "The dynamic memory range does not satisfy static_min <= dynamic_min <= dynamic_max <= static_max.")
# VMs and hosts
VM_BAD_POWER_STATE = _declare("VM_BAD_POWER_STATE", "vm expected actual", "You attempted an operation on a VM that was not in an appropriate power state.")
VM_IS_TEMPLATE = _declare("VM_IS_TEMPLATE", "vm op", "The operation attempted is not valid for a template VM.")
ONLY_PROVISION_TEMPLATE = _declare("ONLY_PROVISION_TEMPLATE", "", "The provision call can only be invoked on templates, not regular VMs.")
VM_IS_SNAPSHOT = _declare("VM_IS_SNAPSHOT", "vm op", "The operation attempted is not valid for a snapshot VM.")
VM_SHUTDOWN_TIMEOUT = _declare("VM_SHUTDOWN_TIMEOUT", "vm timeout", "The VM did not complete its clean shutdown within the timeout.")
VM_REBOOT_TIMEOUT = _declare("VM_REBOOT_TIMEOUT", "vm timeout", "The VM did not complete its clean reboot within the timeout.")
HOST_NOT_LIVE = _declare("HOST_NOT_LIVE", "", "The host is not reachable: its libvirt connection is down.")
HOST_OFFLINE = _declare("HOST_OFFLINE", "host", "The specified host is offline.")
HOST_NOT_ENOUGH_FREE_MEMORY = _declare("HOST_NOT_ENOUGH_FREE_MEMORY", "needed available", "Not enough host memory is available to perform this operation.")
HOST_DISABLED = _declare("HOST_DISABLED", "host", "The specified host is disabled.")
VM_INCOMPATIBLE_WITH_THIS_HOST = _declare("VM_INCOMPATIBLE_WITH_THIS_HOST", "vm host reason", "The VM is incompatible with the CPU features, hypervisor or devices of this host.")
VM_REQUIRES_SR = _declare("VM_REQUIRES_SR", "vm sr", "You attempted to run a VM on a host which doesn't have access to an SR needed by the VM. The VM has at least one VBD attached to a VDI in the SR.")
VM_REQUIRES_NETWORK = _declare("VM_REQUIRES_NETWORK", "vm network", "You attempted to run a VM on a host which doesn't have a PIF on a Network needed by the VM. The VM has at least one VIF attached to the Network.")
VM_NOT_RESIDENT_HERE = _declare("VM_NOT_RESIDENT_HERE", "vm host", "The specified VM is not currently resident on the specified host.")
HOST_NETWORK_BANDWIDTH_INSUFFICIENT = _declare("HOST_NETWORK_BANDWIDTH_INSUFFICIENT", "host network needed available", "The VM's VIFs on this network ask for more bandwidth (Mbit/s) than the host's link to it offers.")
VM_MIGRATE_FAILED = _declare("VM_MIGRATE_FAILED", "vm source destination msg", "An error occurred during the migration process; the VM is still where it was.")
# Pools: hosts added, removed and evacuated
POOL_JOINING_HOST_CONNECTION_FAILED = _declare("POOL_JOINING_HOST_CONNECTION_FAILED", "uri reason", "The host being added to the pool could not be reached: its libvirt URI did not answer, or its facts could not be read.")
POOL_HOSTS_NOT_HOMOGENEOUS = _declare("POOL_HOSTS_NOT_HOMOGENEOUS", "reason", "The host cannot join: a pool has one hypervisor type (libvirt getType(): QEMU, Xen, LXC or TEST), and the reason names both.")
HOST_IN_USE = _declare("HOST_IN_USE", "host type ref", "This operation cannot be completed as the host is in use by (at least) the object of type and ref echoed below.")
NO_HOSTS_AVAILABLE = _declare("NO_HOSTS_AVAILABLE", "vm", "There were no servers available to complete the specified operation (host.evacuate: no other enabled, live host to take the VM).")
CANNOT_EVACUATE_HOST = _declare("CANNOT_EVACUATE_HOST", "errors", "This host cannot be evacuated: every VM that prevents it, as \"CODE,param,...\" descriptions joined with \"|\".")
# Storage (shared/reference/xenapi-storage-network-pool.md 1.7: the parameters xapi really sends)
SR_HAS_NO_PBDS = _declare("SR_HAS_NO_PBDS", "sr", "The SR has no attached PBDs (no host has it plugged).")
SR_HAS_PBD = _declare("SR_HAS_PBD", "sr", "The SR is still connected to a host via a PBD. It cannot be destroyed or forgotten.")
SR_NOT_EMPTY = _declare("SR_NOT_EMPTY", "", "The SR operation cannot be performed because the SR is not empty.")
SR_INDESTRUCTIBLE = _declare("SR_INDESTRUCTIBLE", "sr", "The SR has other_config:indestructible set.")
SR_UNKNOWN_DRIVER = _declare("SR_UNKNOWN_DRIVER", "driver", "The SR could not be connected because the driver was not recognised.")
SR_NOT_SHARABLE = _declare("SR_NOT_SHARABLE", "sr host", "The PBD could not be plugged because the SR is in use by another host and is not marked as sharable.")
SR_UUID_EXISTS = _declare("SR_UUID_EXISTS", "uuid", "An SR with that uuid already exists.")
SR_OPERATION_NOT_SUPPORTED = _declare("SR_OPERATION_NOT_SUPPORTED", "sr", "The SR backend does not support the operation (check the SR's allowed operations).")
SR_FULL = _declare("SR_FULL", "requested maximum", "The SR is full. Requested new size exceeds the maximum size.")
PBD_EXISTS = _declare("PBD_EXISTS", "sr host pbd", "A PBD already exists connecting the SR to the host.")
VDI_IN_USE = _declare("VDI_IN_USE", "vdi operation", "This operation cannot be performed because this VDI is in use by some other operation.")
VDI_READONLY = _declare("VDI_READONLY", "vdi", "The operation required write access but this VDI is read-only.")
VDI_TOO_SMALL = _declare("VDI_TOO_SMALL", "vdi minimum_size", "The VDI is too small. Please resize it to at least the minimum size.")
VDI_IS_SHARABLE = _declare("VDI_IS_SHARABLE", "vdi", "This operation cannot be performed because the specified VDI is sharable.")
VDI_INCOMPATIBLE_TYPE = _declare("VDI_INCOMPATIBLE_TYPE", "vdi type", "This operation cannot be performed because the specified VDI is of an incompatible type.")
VDI_NOT_MANAGED = _declare("VDI_NOT_MANAGED", "vdi", "This operation cannot be performed because the system does not manage this VDI.")
VDI_MISSING = _declare("VDI_MISSING", "sr vdi", "This operation cannot be performed because the specified VDI could not be found on the storage substrate.")
VDI_COPY_FAILED = _declare("VDI_COPY_FAILED", "reason", "The VDI copy action has failed.")
UNIMPLEMENTED_IN_SM_BACKEND = _declare("UNIMPLEMENTED_IN_SM_BACKEND", "message", "You have attempted a function which is not implemented.")
VBD_NOT_EMPTY = _declare("VBD_NOT_EMPTY", "vbd", "Operation could not be performed because the drive is not empty.")
VBD_IS_EMPTY = _declare("VBD_IS_EMPTY", "vbd", "Operation could not be performed because the drive is empty.")
VBD_NOT_REMOVABLE_MEDIA = _declare("VBD_NOT_REMOVABLE_MEDIA", "vbd", "Media could not be ejected because it is not removable.")
VBD_NOT_UNPLUGGABLE = _declare("VBD_NOT_UNPLUGGABLE", "vbd", "Drive could not be hot-unplugged because it is not marked as unpluggable.")
VBD_CDS_MUST_BE_READONLY = _declare("VBD_CDS_MUST_BE_READONLY", "", "Read/write CDs are not supported.")
DEVICE_ALREADY_ATTACHED = _declare("DEVICE_ALREADY_ATTACHED", "device", "The device is already attached to a VM.")
DEVICE_ALREADY_DETACHED = _declare("DEVICE_ALREADY_DETACHED", "device", "The device is not currently attached.")
DEVICE_DETACH_REJECTED = _declare("DEVICE_DETACH_REJECTED", "type ref msg", "The VM rejected the attempt to detach the device.")
DEVICE_ALREADY_EXISTS = _declare("DEVICE_ALREADY_EXISTS", "device", "A device with the name given already exists on the selected VM.")
INVALID_DEVICE = _declare("INVALID_DEVICE", "device", "The device name is invalid.")
VM_LACKS_FEATURE = _declare("VM_LACKS_FEATURE", "vm", "You attempted an operation on a VM which lacks the feature (here: hot-plugging this device into this kind of guest).")
# Networks (shared/reference/xenapi-storage-network-pool.md 2)
MAC_INVALID = _declare("MAC_INVALID", "MAC", "The MAC address specified is not valid (six colon-separated hex pairs, not multicast), or another VIF has it.")
VLAN_TAG_INVALID = _declare("VLAN_TAG_INVALID", "VLAN", "You tried to create a VLAN, but the tag you gave was invalid -- it must be between 0 and 4094.")
PIF_VLAN_EXISTS = _declare("PIF_VLAN_EXISTS", "PIF", "You tried to create a VLAN on top of another VLAN interface that already has this tag.")
VLAN_IN_USE = _declare("VLAN_IN_USE", "device vlan", "Operation cannot be performed because this VLAN is already in use.")
PIF_IS_PHYSICAL = _declare("PIF_IS_PHYSICAL", "PIF", "You tried to destroy a PIF, but it represents an aspect of the physical host configuration, and so cannot be destroyed.")
PIF_IS_VLAN = _declare("PIF_IS_VLAN", "PIF", "You tried to create a VLAN or tunnel on top of a VLAN PIF; use the underlying PIF.")
PIF_IS_MANAGEMENT_INTERFACE = _declare("PIF_IS_MANAGEMENT_INTERFACE", "PIF", "The operation you requested cannot be performed because the specified PIF is the management interface.")
PIF_CONFIGURATION_ERROR = _declare("PIF_CONFIGURATION_ERROR", "PIF msg", "An unknown error occurred while attempting to configure an interface.")
NETWORK_CONTAINS_VIF = _declare("NETWORK_CONTAINS_VIF", "vifs", "The network contains active VIFs and cannot be deleted.")
NETWORK_CONTAINS_PIF = _declare("NETWORK_CONTAINS_PIF", "pifs", "The network contains PIFs (host interfaces) and cannot be deleted.")
NETWORK_INCOMPATIBLE_PURPOSES = _declare("NETWORK_INCOMPATIBLE_PURPOSES", "new_purpose conflicting_purpose", "You tried to add a purpose to a network but the new purpose is not compatible with an existing purpose of the network or other networks.")
BRIDGE_NAME_EXISTS = _declare("BRIDGE_NAME_EXISTS", "bridge", "The specified bridge already exists.")
CANNOT_DESTROY_SYSTEM_NETWORK = _declare("CANNOT_DESTROY_SYSTEM_NETWORK", "network", "You tried to destroy a system network: these cannot be destroyed.")
HOST_CANNOT_ATTACH_NETWORK = _declare("HOST_CANNOT_ATTACH_NETWORK", "host network", "Host cannot attach network (in the case of NIC bonding, this may be because attaching the network on this host would require other networks -- that are currently active -- to be taken down).")
TRANSPORT_PIF_NOT_CONFIGURED = _declare("TRANSPORT_PIF_NOT_CONFIGURED", "PIF", "The tunnel transport PIF has no IP configuration set.")
IS_TUNNEL_ACCESS_PIF = _declare("IS_TUNNEL_ACCESS_PIF", "PIF", "You tried to create a VLAN or tunnel on top of a tunnel access PIF - use the underlying transport PIF instead.")
OPENVSWITCH_NOT_ACTIVE = _declare("OPENVSWITCH_NOT_ACTIVE", "", "This operation needs the OpenVSwitch networking backend to be enabled on all hosts in the pool.")
INVALID_IP_ADDRESS_SPECIFIED = _declare("INVALID_IP_ADDRESS_SPECIFIED", "parameter", "A required parameter contained an invalid IP address.")
SECURITY_GROUP_IN_USE = _declare("SECURITY_GROUP_IN_USE", "group users", "The security group still applies to VIFs, or rules of other security groups name it as their peer (the refs follow): remove those first.")
# SM's own failures: SR_BACKEND_FAILURE_<n> ["", reason, detail], as xapi relays them from its drivers
SR_BACKEND_FAILURE = {n: _declare(f"SR_BACKEND_FAILURE_{n}", "status reason detail", f"The storage backend failed ({why}).")
                      for n, why in ((38, "Unimplemented"), (44, "SRNoSpace"), (46, "VDIUnavailable"), (47, "SRUnavailable"),
                                     (79, "VDISize"), (90, "ConfigDeviceMissing"), (94, "ConfigLocationMissing"),
                                     (110, "VDIResize"), (222, "ISOMountFailure"), (1, "Generic"))}
BACKEND_FAILURE = _declare("BACKEND_FAILURE", "host operation code message", "The hypervisor (libvirt) refused or failed the operation.")


class XenAPIError(Exception):
    """An API-level failure: a declared code and its parameters, all strings."""

    def __init__(self, code: str, *params: object):
        if code not in ERRORS:
            raise ValueError(f"undeclared Xen-API error code {code}")
        self.code = code
        self.params = tuple(_as_text(p) for p in params)
        super().__init__(code, *self.params)

    @property
    def description(self) -> list[str]:
        return [self.code, *self.params]


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
