"""What hot-unplugging a disk (VBD) and a NIC (VIF) share: a guest releases a device in its own
time (QEMU asks it through ACPI), so the unplug re-reads the domain until the device is gone from
the running guest, or says the guest did not let go."""
from __future__ import annotations

import time

from xenapi import errors as E
from xenapi.errors import XenAPIError

DETACH_WAIT = 10.0          # seconds a guest has to release a hot-unplugged device


def wait_released(store, reconciler, cls: str, ref: str, host: str, uuid: str, what: str) -> None:
    """Re-observe domain ``uuid`` on ``host`` until ``cls`` ``ref`` is no longer attached;
    DEVICE_DETACH_REJECTED after DETACH_WAIT seconds."""
    deadline = time.monotonic() + DETACH_WAIT
    while True:
        reconciler.refresh(host, uuid)
        if not store.get(cls, ref)["currently_attached"]:
            return
        if time.monotonic() >= deadline:
            raise XenAPIError(E.DEVICE_DETACH_REJECTED, cls, ref,
                              f"the guest did not release the {what} within {DETACH_WAIT:g} s")
        time.sleep(0.2)
