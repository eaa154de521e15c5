"""console: where to reach a running VM's display (VNC) or text console."""
from classes.enums import ENUMS
from xenapi.model.declare import declare_class, fields
from xenapi.model.roles import VM_ADMIN

console = declare_class(
    "console", "A console: its protocol and the location to connect to.",
    fields("uuid:s protocol:console_protocol location:s VM:@VM other_config*:s2s", ENUMS),
    writer_roles=VM_ADMIN,
)
