"""Templates of every kind: what goes on a new VM's primary disk (the seed's "kind:name").

A template is a VM with ``is_a_template`` true whose ``other_config["template"]`` says its kind
and name, e.g. ``image:debian-12``, ``pxe:centos6.2``, ``lxc:debian-bookworm``.  The kind may be
left out where the VM class has a default (an LXC container's is ``lxc``, any other guest's
``image``).  What each kind does when a VM is made from the template (VM.clone, VM.copy, then
VM.provision):

* ``image``: the template's own disk (a VBD on a VDI holding the image) is cloned, a qcow2
  overlay on the image, or copied (xenapi/services/vm_disks.py).
* ``pxe``: the VM boots from the network first (``HVM_boot_params["order"]`` starts with ``n``)
  with the PXE configuration named in ``other_config["pxe_config"]``, which the libvirt network's
  TFTP root serves.
* ``lxc``: the container gets a root directory of its own (``<state>/lxc/<uuid>/rootfs``) into
  which the root-filesystem tarball ``other_config["lxc_tarball"]`` (a path on the container's
  host) is unpacked.
"""
from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from xenapi import errors as E
from xenapi.errors import XenAPIError

log = logging.getLogger(__name__)

KEY = "template"
KINDS = ("image", "pxe", "lxc")


def kind_of(rec: dict, virt_type: str) -> tuple[str, str]:
    """(kind, name) of a template record; VALUE_NOT_SUPPORTED for a kind this server lacks."""
    text = rec["other_config"].get(KEY, "")
    kind, _, name = text.rpartition(":")
    kind = kind or ("lxc" if virt_type == "lxc" else "image")
    if kind not in KINDS:
        raise XenAPIError(E.VALUE_NOT_SUPPORTED, "other_config:template", text,
                          f"a template's kind is one of {', '.join(KINDS)}")
    return kind, name or rec["name_label"]


def check(rec: dict, virt_type: str) -> None:
    """What a template of its kind needs, checked before anything is made from it."""
    kind, _ = kind_of(rec, virt_type)
    if kind == "lxc" and virt_type != "lxc":
        raise XenAPIError(E.VALUE_NOT_SUPPORTED, "other_config:template", rec["other_config"][KEY],
                          "an lxc: template needs an LXC host")
    if kind == "pxe" and not rec["HVM_boot_params"].get("order", "").startswith("n"):
        raise XenAPIError(E.VALUE_NOT_SUPPORTED, "HVM_boot_params:order", rec["HVM_boot_params"].get("order", ""),
                          "a pxe: template boots from the network first: order must start with n")
    tarball = rec["other_config"].get("lxc_tarball", "")
    if kind == "lxc" and tarball and not Path(tarball).is_file():
        raise XenAPIError(E.VALUE_NOT_SUPPORTED, "other_config:lxc_tarball", tarball,
                          "no such root-filesystem tarball on this host")


def unpack_root(tarball: str, root: str) -> None:
    """Unpack a root-filesystem tarball into a container's (empty) root, as root: owners, modes
    and device nodes kept (tar's -p and --numeric-owner), nothing written outside ``root``."""
    target = Path(root)
    if any(target.iterdir()):
        raise XenAPIError(E.VALUE_NOT_SUPPORTED, "platform:lxc-root", root,
                          "the container's root is not empty: a template unpacks only into an empty root")
    done = subprocess.run(["tar", "-x", "-p", "--numeric-owner", "--same-owner", "-f", tarball, "-C", root],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise XenAPIError(E.VALUE_NOT_SUPPORTED, "other_config:lxc_tarball", tarball,
                          f"unpacking failed: {done.stderr.strip()[:300]}")
    log.info("event=lxc-root-unpacked tarball=%s root=%s", tarball, root)
