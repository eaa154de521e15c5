"""What the storage classes (SR, VDI, VBD, PBD) share: how a message reaches the storage service
(xenapi/services/storage.py), and the check of a proposed operation against a class's table."""
from classes.enums import ENUMS
from xenapi.model import types as T
from xenapi.model.declare import Message, message, param
from xenapi.model.roles import READ_ONLY


def storage(method: str):
    """A message body that hands its arguments to the storage service's ``method``."""
    return lambda ctx, *args: getattr(ctx.services.storage, method)(ctx, *args)


def assert_operation_valid(cls: str, operations: str, errors: tuple[str, ...]) -> Message:
    """xapi's <cls>.assert_operation_valid(self, op), answered from the class's operation table."""
    return message(
        "assert_operation_valid", "Check whether this operation is acceptable in the current state of the "
        "system, raising an error if the operation is invalid for some reason",
        params=[param(T.Ref(cls), "self", f"The {cls}"), param(ENUMS[operations], "op", "proposed operation")],
        impl=lambda ctx, ref, op: ctx.services.storage.tables[cls].assert_valid(ctx.store, ref, op),
        roles=READ_ONLY, changes_nothing=True, errors=errors)
