"""Can this host run this VM?  The Xen-API draft's ``host.qualify(vm, host)``, with every reason when
it cannot, and what VM.start, VM.start_on, VM.get_possible_hosts, VM.assert_can_boot_here and the
migration dry run (VM.migrate with test true, VM.assert_can_migrate) ask of it.

Each reason is a Xen-API error, xapi's code where xapi has one:

| check | reason |
|---|---|
| the host is connected | HOST_NOT_LIVE |
| the host is enabled | HOST_DISABLED [host] |
| the hypervisor and the VM class (a QEMU/KVM guest, a Xen PV or HVM guest, an LXC container) | VM_INCOMPATIBLE_WITH_THIS_HOST [vm, host, why] |
| memory: the VM's memory_dynamic_max (what libvirt gives it at start) within what the host has free or reclaimable (libvirt's memory stats; on the test driver its total less a nominal OS and the resident guests), less the VMs starting or arriving there | HOST_NOT_ENOUGH_FREE_MEMORY [needed, available] |
| CPU: the guest's CPU definition compared on the host (libvirt's compareHypervisorCPU), not host against host | VM_INCOMPATIBLE_WITH_THIS_HOST [vm, host, "CPU: ..."] |
| a vTPM needs the host's emulator (swtpm; libvirt's domain capabilities) | VM_INCOMPATIBLE_WITH_THIS_HOST [vm, host, "TPM: ..."] |
| every SR of its disks plugged there, or its VDIs copyable to the host's local SR (what a migration does) | VM_REQUIRES_SR [vm, sr] |
| every network of its VIFs with a PIF there; a VLAN network needs the host's VLAN support | VM_REQUIRES_NETWORK [vm, network] |
| the VIFs' rate limits on a network within the host's link speed to it | HOST_NETWORK_BANDWIDTH_INSUFFICIENT [host, network, needed, available] |

Checks read the store, and libvirt only for what the store cannot say (the guest's CPU and TPM,
once per question; the host's domain capabilities, once per host).
"""
from __future__ import annotations

import logging
import threading
import xml.etree.ElementTree as ET
from contextlib import contextmanager

import libvirt

from xenapi import errors as E
from xenapi.backend.libvirt_errors import is_unsupported
from xenapi.errors import XenAPIError
from xenapi.model.types import NULL_REF
from xenapi.services.host_networking import CAP_8021Q, CAP_OVS

log = logging.getLogger(__name__)

SIMULATED_OS_MEMORY = 512 * 1024 * 1024     # the test driver's host has no OS of its own: a nominal figure
_CLASS_OF_DRIVER = {"QEMU": {"qemu", "kvm"}, "Xen": {"xen"}, "LXC": {"lxc"}, "TEST": {"test"}}


class Guest:
    """What a qualification needs of the VM, read once per question."""

    def __init__(self, store, hosts, vm: str):
        self.ref, self.rec = vm, store.get("VM", vm)
        self.home = hosts.homes.get(vm)
        self.virt_type, self.cpu, self.tpm = "", None, False
        if self.home is not None and hosts.live(self.home):
            try:
                root = ET.fromstring(hosts.connection(self.home).xml(self.rec["uuid"], inactive=True))
                self.virt_type = root.get("type", "")
                self.arch = (root.find("os/type").get("arch", "") if root.find("os/type") is not None else "")
                self.machine = root.find("os/type").get("machine", "") if root.find("os/type") is not None else ""
                cpu = root.find("cpu")
                # check='none': libvirt itself does not hold the guest to its model (its own default
                # CPU, e.g. qemu64, is written so): nothing to compare
                if cpu is not None and cpu.get("check") != "none" and \
                        (cpu.find("model") is not None or cpu.get("mode") in ("host-model", "host-passthrough")):
                    self.cpu = ET.tostring(cpu, encoding="unicode")
                    self.cpu_mode = cpu.get("mode", "custom")
                self.tpm = root.find("devices/tpm") is not None
            except XenAPIError as e:
                log.info("event=qualify-read-failed vm=%s error=%s", vm, e.code)
        self.memory = self.rec["memory_dynamic_max"]
        self.vifs = [store.get("VIF", v) for v in self.rec["VIFs"]]
        self.vdis = [store.get("VDI", b["VDI"]) | {"ref": b["VDI"]} for v in self.rec["VBDs"]
                     if not (b := store.get("VBD", v))["empty"] and b["VDI"] != NULL_REF and store.exists("VDI", b["VDI"])]


def simulated_free_memory(store, host: str, excluding=()) -> int:
    """The test driver's free memory, whose own figures are made up: its total less a nominal OS
    and what the resident guests (but those in ``excluding``) are given."""
    rec = store.get("host", host)
    total = store.get("host_metrics", rec["metrics"])["memory_total"]
    used = sum(vm["memory_dynamic_max"] for ref in rec["resident_VMs"]
               if ref not in excluding and (vm := store.find("VM", ref)) is not None and not vm["is_control_domain"])
    return max(0, total - SIMULATED_OS_MEMORY - used)


class Placement:
    def __init__(self, store, hosts, networks):
        self.store = store
        self.hosts = hosts
        self.networks = networks
        self._lock = threading.Lock()
        self._arriving: dict[str, dict[str, int]] = {}     # host -> VM -> bytes, while a start or move is under way
        self._tpm: dict[str, bool] = {}                     # host -> libvirt there offers an emulated TPM

    # -- memory ---------------------------------------------------------------------------------------
    def available_memory(self, host: str, excluding: str = "") -> int:
        """Bytes a VM arriving on ``host`` can have, less what the VMs already arriving there take.

        A real host: what libvirt says is free or reclaimable now (free + buffers + page cache:
        getMemoryStats), since its guests' use is in that figure already.  The test driver, whose
        figures are made up: its total less a nominal OS and what the resident guests are given."""
        with self._lock:
            arriving = {ref: size for ref, size in self._arriving.get(host, {}).items() if ref != excluding}
        if not self.hosts.simulated(host):
            return max(0, self.hosts.reclaimable_memory(host) - sum(arriving.values()))
        free = simulated_free_memory(self.store, host, excluding={excluding, *arriving})
        return max(0, free - sum(arriving.values()))

    @contextmanager
    def arriving(self, vm: str, host: str):
        """Count ``vm`` on ``host`` while it starts or moves there, so two starts do not both take
        the same free memory."""
        size = self.store.get("VM", vm)["memory_dynamic_max"]
        with self._lock:
            self._arriving.setdefault(host, {})[vm] = size
        try:
            yield
        finally:
            with self._lock:
                self._arriving.get(host, {}).pop(vm, None)

    # -- the checks -----------------------------------------------------------------------------------
    def reasons(self, vm: str, host: str, guest: Guest | None = None) -> list[XenAPIError]:
        """Every reason ``host`` cannot run ``vm`` (empty: it can)."""
        if not self.store.exists("host", host):
            return [XenAPIError(E.HANDLE_INVALID, "host", host)]
        guest = guest or Guest(self.store, self.hosts, vm)
        rec = self.store.get("host", host)
        if not self.hosts.live(host):
            return [XenAPIError(E.HOST_NOT_LIVE)]
        found = []
        if not rec["enabled"]:
            found.append(XenAPIError(E.HOST_DISABLED, host))
        found += self._hypervisor(guest, host, rec)
        resident = guest.rec["resident_on"] == host
        needed, available = guest.memory, self.available_memory(host, excluding=vm)
        if not resident and needed > available:
            found.append(XenAPIError(E.HOST_NOT_ENOUGH_FREE_MEMORY, needed, available))
        found += self._cpu(guest, host)
        found += self._tpm_check(guest, host)
        found += self._storage(guest, host)
        found += self._networks(guest, host, rec)
        return found

    def _incompatible(self, guest: Guest, host: str, why: str) -> XenAPIError:
        return XenAPIError(E.VM_INCOMPATIBLE_WITH_THIS_HOST, guest.ref, host, why)

    def _hypervisor(self, guest: Guest, host: str, rec: dict) -> list[XenAPIError]:
        driver = rec["software_version"].get("hypervisor", "")
        if not guest.virt_type:
            home = self.store.find("host", guest.home) if guest.home else None
            home_driver = home["software_version"].get("hypervisor", "") if home else ""
            if home_driver and home_driver != driver:
                return [self._incompatible(guest, host, f"a {home_driver} guest cannot run on a {driver} host")]
            return []
        if guest.virt_type not in _CLASS_OF_DRIVER.get(driver, set()):
            kind = {"lxc": "an LXC container", "xen": "a Xen guest", "kvm": "a KVM guest", "qemu": "a QEMU guest",
                    "test": "a test-driver guest"}.get(guest.virt_type, f"a {guest.virt_type} guest")
            return [self._incompatible(guest, host, f"{kind} cannot run on a {driver or 'unknown'} host")]
        virt_types = rec["software_version"].get("virt_types", "").split()
        if guest.virt_type == "kvm" and virt_types and "kvm" not in virt_types:
            return [self._incompatible(guest, host, "the guest needs KVM, which this host does not offer")]
        return []

    def _cpu(self, guest: Guest, host: str) -> list[XenAPIError]:
        if guest.cpu is None or guest.rec["resident_on"] == host:
            return []
        running = guest.rec["power_state"] in ("Running", "Paused")
        if guest.cpu_mode == "host-model" or (guest.cpu_mode == "host-passthrough" and not running):
            return []            # it takes the CPU of the host it starts on
        if guest.cpu_mode == "host-passthrough":
            mine = self.store.get("host", host)["cpu_info"].get("modelname", "")
            theirs = self.store.get("host", guest.home)["cpu_info"].get("modelname", "") if guest.home else ""
            if mine != theirs:
                return [self._incompatible(guest, host, f"CPU: the guest passes through its host's CPU ({theirs}); this host has {mine}")]
            return []

        def compare(c):
            try:
                return c.compareHypervisorCPU(None, guest.arch or None, guest.machine or None, guest.virt_type or None,
                                              guest.cpu, 0)
            except libvirt.libvirtError as e:
                if is_unsupported(e):
                    return None
                raise
        try:
            result = self.hosts.connection(host).read("compare_cpu", compare)
        except XenAPIError as e:
            return [self._incompatible(guest, host, f"CPU: libvirt could not compare: {e.params[-1] if e.params else e.code}")]
        if result == libvirt.VIR_CPU_COMPARE_INCOMPATIBLE:
            return [self._incompatible(guest, host, "CPU: the guest's CPU model or features are not available on this host")]
        return []

    def _tpm_check(self, guest: Guest, host: str) -> list[XenAPIError]:
        if not guest.tpm:
            return []
        if host not in self._tpm:
            def emulator(c):
                try:
                    caps = ET.fromstring(c.getDomainCapabilities(None, None, None, guest.virt_type or None, 0))
                except libvirt.libvirtError:
                    return False
                tpm = caps.find("devices/tpm")
                return tpm is not None and tpm.get("supported") == "yes" and \
                    any(v.text == "emulator" for v in tpm.iterfind("enum[@name='backendModel']/value"))
            self._tpm[host] = self.hosts.connection(host).read("domain_capabilities", emulator)
        if not self._tpm[host]:
            return [self._incompatible(guest, host, "TPM: the guest has a vTPM and this host offers no TPM emulator (swtpm)")]
        return []

    def _storage(self, guest: Guest, host: str) -> list[XenAPIError]:
        found, copy_size = [], 0
        for vdi in guest.vdis:
            if not self.sr_plugged(vdi["SR"], host):
                copy_size += vdi["virtual_size"]
                found.append(vdi["SR"])
        if not found:
            return []
        local = self.local_sr(host)
        if local is not None and guest.rec["power_state"] in ("Halted", "Running", "Paused"):
            sr = self.store.get("SR", local)
            if sr["physical_size"] - sr["physical_utilisation"] >= copy_size:
                return []                                  # its disks can be copied there (a migration does)
        return [XenAPIError(E.VM_REQUIRES_SR, guest.ref, sr) for sr in dict.fromkeys(found)]

    def sr_plugged(self, sr: str, host: str) -> bool:
        rec = self.store.find("SR", sr)
        return rec is not None and any((p := self.store.find("PBD", pbd)) is not None and p["host"] == host
                                       and p["currently_attached"] for pbd in rec["PBDs"])

    def local_sr(self, host: str) -> str | None:
        """The host's "Local storage" SR, plugged there (where a migration copies disks to)."""
        for pbd in self.store.get("host", host)["PBDs"]:
            rec = self.store.find("PBD", pbd)
            sr = self.store.find("SR", rec["SR"]) if rec is not None else None
            if sr is not None and rec["currently_attached"] and sr["other_config"].get("i18n-key") == "local-storage":
                return rec["SR"]
        return None

    def _networks(self, guest: Guest, host: str, rec: dict) -> list[XenAPIError]:
        found, wanted = [], {}
        for vif in guest.vifs:
            wanted[vif["network"]] = wanted.get(vif["network"], 0) + self.networks.rate_of(vif)
        for network, kbps in wanted.items():
            pif = self.networks.pif_ref_on(network, host) if self.store.exists("network", network) else None
            if pif is None:
                vlan = any((p := self.store.find("PIF", x)) is not None and p["VLAN"] >= 0
                           for x in self.store.get("network", network)["PIFs"]) if self.store.exists("network", network) else False
                if vlan and not {CAP_OVS, CAP_8021Q} & set(rec["capabilities"]):
                    found.append(self._incompatible(guest, host, f"network {network} is a VLAN and this host has "
                                                    "neither Open vSwitch nor 802.1q VLAN support"))
                found.append(XenAPIError(E.VM_REQUIRES_NETWORK, guest.ref, network))
                continue
            speed = self.store.get("PIF_metrics", self.store.get("PIF", pif)["metrics"])["speed"]
            if kbps and speed > 0 and kbps / 1000 > speed:
                found.append(XenAPIError(E.HOST_NETWORK_BANDWIDTH_INSUFFICIENT, host, network, kbps // 1000, speed))
        return found

    def forget_host(self, host: str) -> None:
        """A host leaves the pool: nothing of it is kept here."""
        with self._lock:
            self._arriving.pop(host, None)
        self._tpm.pop(host, None)

    # -- what the messages ask ----------------------------------------------------------------------
    def qualify(self, vm: str, host: str) -> bool:
        return not self.reasons(vm, host)

    def possible_hosts(self, vm: str) -> list[str]:
        guest = Guest(self.store, self.hosts, vm)
        return [h for h in self.hosts.refs if not self.reasons(vm, h, guest)]

    def choose(self, vm: str) -> str:
        """Where VM.start puts a VM: its affinity host (xapi's home server) when that qualifies;
        else, among the hosts that qualify, the one with the most memory left (best fit by free
        memory), its home first on a tie.  The reasons of its home when none does."""
        guest = Guest(self.store, self.hosts, vm)
        affinity = guest.rec["affinity"]
        if affinity in self.hosts.refs and not self.reasons(vm, affinity, guest):
            return affinity
        fits = {h: self.available_memory(h, excluding=vm) for h in self.hosts.refs if not self.reasons(vm, h, guest)}
        if not fits:
            raise (self.reasons(vm, guest.home, guest) if guest.home else [XenAPIError(E.HOST_NOT_LIVE)])[0]
        return max(fits, key=lambda h: (fits[h], h == guest.home))
