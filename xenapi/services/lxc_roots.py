"""Each LXC container's own root directory, so none shares the host's ``/``.

libvirt runs a container without a root ``<filesystem>`` in the host's root filesystem; the
builder refuses that (domxml), and a VM.create on an LXC host that names no ``platform:lxc-root``
gets ``<state>/lxc/<uuid>/rootfs``: an empty directory, made before the domain is defined, that
the administrator fills (debootstrap, an image's tree, a static busybox) before the first start.
VM.destroy removes it again only while it is still empty: the server never deletes a filled tree.
"""
from __future__ import annotations

import logging
from pathlib import Path

from xenapi import errors as E
from xenapi.backend import domxml
from xenapi.errors import XenAPIError

log = logging.getLogger(__name__)
ROOT_KEY = domxml.LXC_ROOT_KEY


def default_root(state: str, uuid: str) -> Path | None:
    """Where the container ``uuid`` gets its root by default; None without a state directory."""
    return None if state == ":memory:" else Path(state) / "lxc" / uuid / "rootfs"


def own_root(state: str, uuid: str, platform: dict) -> dict:
    """``platform`` with an ``lxc-root``: the caller's, else the default directory, made now."""
    given = platform.get(ROOT_KEY)
    if given:
        if not domxml.is_container_root(given):
            raise XenAPIError(E.VALUE_NOT_SUPPORTED, f"platform:{ROOT_KEY}", given,
                              "the container's root must be an absolute host directory other than /")
        return platform
    root = default_root(state, uuid)
    if root is None:
        raise XenAPIError(E.VALUE_NOT_SUPPORTED, f"platform:{ROOT_KEY}", "",
                          "this server keeps no state directory to give the container a root of its own: "
                          f"set platform:{ROOT_KEY} to a host directory holding the container's files")
    try:
        root.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as e:
        raise XenAPIError(E.VALUE_NOT_SUPPORTED, f"platform:{ROOT_KEY}", "",
                          f"cannot make the container's root directory {root}: {e.strerror}") from e
    return {**platform, ROOT_KEY: str(root)}


def release_root(state: str, uuid: str, platform: dict) -> None:
    """Remove the default root of a destroyed container (and its uuid directory) if still empty."""
    root = default_root(state, uuid)
    if root is None or platform.get(ROOT_KEY) != str(root):
        return
    for directory in (root, root.parent):
        try:
            directory.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            log.info("event=lxc-root-kept path=%s reason=not-empty", directory)
            return
