"""Templates of every kind: what goes on a new VM's primary disk (the seed's "kind:name").

A template is a VM with ``is_a_template`` true whose ``other_config["template"]`` says its kind
and name, e.g. ``image:debian-12``, ``pxe:centos6.2``, ``lxc:debian-bookworm``.  The kind may be
left out where the VM class has a default (an LXC container's is ``lxc``, any other guest's
``image``).  What each kind does when a VM is made from the template (VM.clone, VM.copy, then
VM.provision):

* ``image``: the template's own disk (a VBD on a VDI holding the image) is cloned, a qcow2
  overlay on the image, or copied (xenapi/services/vm_disks.py).
* ``pxe``: the VM boots from the network first (``HVM_boot_params["order"]`` starts with ``n``)
  with the PXELINUX configuration named in ``other_config["pxe_config"]`` (default: the
  template's name), served by the network ``other_config["pxe_network"]`` (a network uuid or
  ref; default: the first network of the template's VIFs that has a TFTP root).  That network's
  libvirt dnsmasq serves DHCP with a boot file and TFTP (network.create's ``tftp_root`` and
  ``boot_file``); its TFTP root is a PXELINUX tree: the boot file (``pxelinux.0``),
  ``ldlinux.c32`` beside it, and ``pxelinux.cfg/<pxe_config>`` in the boot file's directory.

  - VM.clone / VM.copy of the template check that all of this is there on the host, so a
    template that cannot be served fails there, not at boot.
  - VM.provision checks it again, then, before anything else changes: gives the VM a VIF on
    that network if it has none there (the lowest free device), and writes
    ``pxelinux.cfg/01-<its MAC, with dashes>``: a copy of ``pxelinux.cfg/<pxe_config>`` under a
    header line naming the VM.  PXELINUX looks for its per-MAC file first, so this VM boots that
    configuration whatever the TFTP root's ``default`` says.  The file's path is kept in the VM's
    ``other_config["pxe_file"]``.  If the rest of the provisioning fails, the file and the VIF
    made go again.
  - VM.destroy removes the file (only a file whose header names that VM: a clone of a
    provisioned VM inherits ``pxe_file`` but not the file).

  The TFTP root is a path on the VM's host.  A local host (a libvirt URI without a host part,
  libvirt's test driver included) has it read and written here directly; a host reached through
  a shell (``qemu+ssh://``, or a ``[host_exec]`` prefix, xenapi/backend/host_shell.py) through
  ``test``, ``cat``, ``mv`` and ``rm`` run there; a host with no shell (``qemu+tcp``/``tls``)
  cannot serve a ``pxe:`` template: the clone says so.
* ``lxc``: the container gets a root directory of its own (``<state>/lxc/<uuid>/rootfs``) into
  which the root-filesystem tarball ``other_config["lxc_tarball"]`` (a path on the container's
  host) is unpacked.
"""
from __future__ import annotations

import logging
import posixpath
import re
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from xenapi import errors as E
from xenapi.backend import host_shell, machine
from xenapi.errors import XenAPIError
from xenapi.model.types import NULL_REF

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


# -- pxe: templates ------------------------------------------------------------------------------

PXE_CONFIG_KEY, PXE_NETWORK_KEY, PXE_FILE_KEY = "pxe_config", "pxe_network", "pxe_file"
_MARK = "# xenapi: PXE configuration of VM "
_CONFIG_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$")


class _LocalFiles:
    """The TFTP root of a host that is this machine: plain file operations."""

    where = "this machine"

    def is_file(self, path: str) -> bool:
        return Path(path).is_file()

    def is_writable_dir(self, path: str) -> bool:
        import os
        return Path(path).is_dir() and os.access(path, os.W_OK | os.X_OK)

    def read(self, path: str) -> str | None:
        try:
            return Path(path).read_text(errors="replace")
        except FileNotFoundError:
            return None

    def write(self, path: str, text: str) -> None:
        import os
        part = f"{path}.xenapi-part"
        with open(part, "w") as f:
            f.write(text)
        os.chmod(part, 0o644)            # dnsmasq serves it as its own unprivileged user
        os.replace(part, path)

    def remove(self, path: str) -> None:
        Path(path).unlink(missing_ok=True)


class _ShellFiles:
    """The TFTP root of a host reached through its shell (ssh, a ``[host_exec]`` prefix)."""

    def __init__(self, shell: host_shell.HostShell):
        self.shell, self.where = shell, shell.description

    def _run(self, argv: list[str], input: str | None = None):
        try:
            return self.shell.run(argv, timeout=30.0, input=input)
        except host_shell.HostShellError as e:
            raise XenAPIError(E.OPERATION_NOT_ALLOWED, f"PXE configuration on {self.where}: {e}") from None

    def is_file(self, path: str) -> bool:
        return self._run(["test", "-f", path]).returncode == 0

    def is_writable_dir(self, path: str) -> bool:
        return self._run(["sh", "-c", 'test -d "$1" && test -w "$1" && test -x "$1"', "sh", path]).returncode == 0

    def read(self, path: str) -> str | None:
        done = self._run(["sh", "-c", 'test -f "$1" || exit 3; cat -- "$1"', "sh", path])
        if done.returncode == 3:
            return None
        if done.returncode != 0:
            raise XenAPIError(E.OPERATION_NOT_ALLOWED, f"cannot read {path} on {self.where}: {done.stderr.strip()[:300]}")
        return done.stdout

    def write(self, path: str, text: str) -> None:
        done = self._run(["sh", "-c", 'cat > "$1.xenapi-part" && chmod 644 "$1.xenapi-part" && mv -f "$1.xenapi-part" "$1"',
                          "sh", path], input=text)
        if done.returncode != 0:
            raise XenAPIError(E.OPERATION_NOT_ALLOWED, f"cannot write {path} on {self.where}: {done.stderr.strip()[:300]}")

    def remove(self, path: str) -> None:
        done = self._run(["rm", "-f", "--", path])
        if done.returncode != 0:
            raise XenAPIError(E.OPERATION_NOT_ALLOWED, f"cannot remove {path} on {self.where}: {done.stderr.strip()[:300]}")


@dataclass(frozen=True)
class PXEPlan:
    """What serving a ``pxe:`` template's VM takes on its host, all checked."""

    host: str
    network: str           # the network's ref
    config_dir: str        # <tftp root>/<boot file's directory>/pxelinux.cfg, on the host
    config: str            # the named configuration's file name in config_dir
    text: str              # its content
    files: object          # _LocalFiles | _ShellFiles


def _pxe_error(field: str, value: str, why: str) -> XenAPIError:
    return XenAPIError(E.VALUE_NOT_SUPPORTED, f"other_config:{field}", value, why)


class PXE:
    """Serving ``pxe:`` templates: a network's TFTP root on a host, reached directly or through
    the host's shell ([host_exec])."""

    def __init__(self, store, hosts, networks, host_exec: dict[str, str]):
        self.store, self.hosts, self.networks, self.host_exec = store, hosts, networks, host_exec

    def _files(self, host: str):
        """How the server reaches files on ``host``: directly on this machine (a local URI without a
        ``[host_exec]`` prefix), else through the host's shell; OPERATION_NOT_ALLOWED without one."""
        uri = self.hosts.uri_of(host)
        prefix = self.host_exec.get(uri)
        if prefix is None and machine.is_local_uri(uri):
            return _LocalFiles()
        shell = host_shell.for_uri(uri, prefix)
        if not shell.available:
            raise XenAPIError(E.OPERATION_NOT_ALLOWED, f"a pxe: template needs the files of the TFTP root on host "
                              f"{host}, and there is no shell there: {shell.why_not}")
        return _ShellFiles(shell)

    def _network(self, rec: dict, host: str) -> str:
        """The network that serves the template: ``pxe_network`` (uuid or ref), else the first of
        its VIFs' networks with a TFTP root on ``host``."""
        store, value = self.store, rec["other_config"].get(PXE_NETWORK_KEY, "")
        if value:
            ref = (value if value.startswith("OpaqueRef:") and store.exists("network", value)
                   else store.find_uuid("network", value))
            if ref is None:
                raise _pxe_error(PXE_NETWORK_KEY, value, "no such network (give a network's uuid)")
            return ref
        vifs = sorted((store.get("VIF", v) for v in rec["VIFs"] if store.exists("VIF", v)),
                      key=lambda v: int(v["device"]))
        for vif in vifs:
            if vif["network"] != NULL_REF and store.exists("network", vif["network"]) and \
                    self._tftp_of(vif["network"], host)[0]:
                return vif["network"]
        raise _pxe_error(PXE_NETWORK_KEY, "", "a pxe: template names the network that serves it (other_config:"
                         "pxe_network, a network made with tftp_root and boot_file), and none of its VIFs has one")

    def _tftp_of(self, network: str, host: str) -> tuple[str, str]:
        """(TFTP root, DHCP boot file) of ``network``'s libvirt network on ``host`` ("" where none)."""
        uuid = self.store.get("network", network)["uuid"]
        if self.networks.pif_ref_on(network, host) is None:
            raise XenAPIError(E.HOST_CANNOT_ATTACH_NETWORK, host, network)
        try:
            root = ET.fromstring(self.hosts.connection(host).network_state(uuid).xml)
        except Exception as e:            # not a libvirt network of this host (a host interface's own)
            log.debug("event=pxe-network-unreadable network=%s error=%s", uuid, e)
            return "", ""
        tftp, bootp = root.find("ip/tftp"), root.find("ip/dhcp/bootp")
        if bootp is not None and bootp.get("server"):        # another machine's TFTP: not ours to write
            return "", ""
        return (tftp.get("root", "") if tftp is not None else ""), (bootp.get("file", "") if bootp is not None else "")

    def plan(self, rec: dict, host: str, virt_type: str) -> PXEPlan | None:
        """For a ``pxe:`` template (None for any other): its network, TFTP root and configuration on
        ``host``, each checked; VALUE_NOT_SUPPORTED (or HOST_CANNOT_ATTACH_NETWORK, or
        OPERATION_NOT_ALLOWED for a host without a shell) naming what is missing."""
        kind, name = kind_of(rec, virt_type)
        if kind != "pxe":
            return None
        config = rec["other_config"].get(PXE_CONFIG_KEY, "") or name
        if not _CONFIG_NAME.match(config) or config.lower().startswith("01-") or config == "default":
            raise _pxe_error(PXE_CONFIG_KEY, config, "a configuration's file name in pxelinux.cfg/: letters, digits, "
                             "_ . + - (not a path, not default, not a per-MAC name 01-...)")
        network = self._network(rec, host)
        label = self.store.get("network", network)["uuid"]
        root, boot_file = self._tftp_of(network, host)
        if not root or not boot_file:
            raise _pxe_error(PXE_NETWORK_KEY, label, "the network does not serve PXE here: it needs a TFTP root and "
                             "a DHCP boot file of its own (network.create's other_config ipv4, dhcp, tftp_root, "
                             "boot_file)")
        files = self._files(host)
        boot_path = posixpath.normpath(posixpath.join(root, boot_file.lstrip("/")))
        if not files.is_file(boot_path):
            raise _pxe_error(PXE_NETWORK_KEY, label, f"the network's boot file {boot_path} is not on {files.where}")
        config_dir = posixpath.join(posixpath.dirname(boot_path), "pxelinux.cfg")
        text = files.read(posixpath.join(config_dir, config))
        if text is None:
            raise _pxe_error(PXE_CONFIG_KEY, config,
                             f"no PXELINUX configuration {config_dir}/{config} on {files.where}")
        if not files.is_writable_dir(config_dir):
            raise _pxe_error(PXE_NETWORK_KEY, label, f"{config_dir} on {files.where} is not a directory the server can "
                             "write the VM's per-MAC configuration into")
        return PXEPlan(host, network, config_dir, config, text, files)

    def serving(self, ctx, vm: str, plan: PXEPlan | None) -> "PXEServing":
        return PXEServing(self.store, self.networks, ctx, vm, plan)

    def release(self, host: str, rec: dict) -> None:
        """After VM.destroy: its per-MAC PXE configuration goes, if the file is still the one written
        for this VM (its header names the VM).  A failure is logged: the VM is gone already."""
        path = rec["other_config"].get(PXE_FILE_KEY, "")
        if not path:
            return
        try:
            files = self._files(host)
            present = files.read(path)
            if present is not None and present.startswith(f"{_MARK}{rec['uuid']} "):
                files.remove(path)
                log.info("event=pxe-config-removed vm=%s path=%s", rec["uuid"], path)
        except XenAPIError as e:
            log.warning("event=pxe-config-not-removed vm=%s path=%s error=%s", rec["uuid"], path, e.code)


def mac_file_name(mac: str) -> str:
    """PXELINUX's per-MAC configuration name: ARP type 01, then the MAC, lower case, dashes."""
    return "01-" + mac.lower().replace(":", "-")


class PXEServing:
    """VM.provision of a ``pxe:`` template's VM: entering gives the VM its VIF on the network (if
    it has none there) and writes its per-MAC configuration; leaving with an exception undoes both,
    so a failed provision leaves neither.  ``plan`` None: nothing to do."""

    def __init__(self, store, networks, ctx, vm: str, plan: PXEPlan | None):
        self.store, self.networks, self.ctx, self.vm, self.plan = store, networks, ctx, vm, plan
        self.vif_made: str | None = None
        self.path: str | None = None

    def __enter__(self) -> "PXEServing":
        if self.plan is None:
            return self
        try:
            self._serve()
        except BaseException:
            self._undo()
            raise
        return self

    def __exit__(self, kind, error, tb) -> None:
        if kind is not None and self.plan is not None:
            self._undo()

    def _serve(self) -> None:
        store, plan = self.store, self.plan
        rec = store.get("VM", self.vm)
        vifs = sorted((store.get("VIF", v) for v in rec["VIFs"]), key=lambda v: int(v["device"]))
        on_network = [v for v in vifs if v["network"] == plan.network]
        if on_network:
            mac = on_network[0]["MAC"]
        else:
            taken = {int(v["device"]) for v in vifs}
            device = next(n for n in range(64) if n not in taken)
            self.vif_made = self.networks.vif_create(self.ctx, {
                "VM": self.vm, "network": plan.network, "device": str(device), "MAC": "", "MTU": 1500,
                "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})
            mac = store.get("VIF", self.vif_made)["MAC"]
        path = posixpath.join(plan.config_dir, mac_file_name(mac))
        present = plan.files.read(path)
        if present is not None and not present.startswith(_MARK):
            raise _pxe_error(PXE_CONFIG_KEY, plan.config, f"{path} on {plan.files.where} is there already and is not "
                             "the server's: it would be this VM's configuration (the VM's MAC is " + mac + ")")
        header = (f"{_MARK}{rec['uuid']} ({rec['name_label']}), a copy of pxelinux.cfg/{plan.config}; "
                  "removed when the VM is destroyed\n")
        plan.files.write(path, header + plan.text)
        self.path = path
        store.modify("VM", self.vm, lambda r: {"other_config": {**r["other_config"], PXE_FILE_KEY: path}})
        log.info("event=pxe-config-written vm=%s mac=%s path=%s host=%s", rec["uuid"], mac, path, plan.files.where)

    def _undo(self) -> None:
        store = self.store
        if self.path is not None:
            try:
                self.plan.files.remove(self.path)
            except XenAPIError as e:
                log.warning("event=pxe-config-undo-failed path=%s error=%s", self.path, e.code)
            if store.exists("VM", self.vm):
                store.modify("VM", self.vm, lambda r: {"other_config": {
                    k: v for k, v in r["other_config"].items() if k != PXE_FILE_KEY}})
        if self.vif_made is not None and store.exists("VIF", self.vif_made):
            try:
                self.networks.vif_destroy(self.ctx, self.vif_made)
            except XenAPIError as e:
                log.warning("event=pxe-vif-undo-failed vif=%s error=%s", self.vif_made, e.code)
        self.path = self.vif_made = None
