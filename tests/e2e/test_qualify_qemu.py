"""host.qualify, host.qualify_reasons and the dry run of VM.migrate(vm, current, destination, test)
with real libvirt hosts that really differ (tests/e2e/lab_hosts.py), through the official XenAPI
client: a server over both lab hosts (lab1 the master) and a third, LXC, host.

This module starts lab hosts of its own: lab2 lacks swtpm (``LabHosts(masked=...)``: an empty,
non-executable file over ``/usr/bin/swtpm`` and ``/usr/bin/swtpm_setup`` in lab2's mount
namespace, so lab2's libvirtd finds no TPM emulator and its domain capabilities say so, as on a
host without the swtpm package), lab1 has it.  And a private LXC libvirtd
(tests/e2e/lxc_libvirtd.py) configured as a third host.

Every case: a halted VM defined on lab1; ``host.qualify(vm, lab2)`` false and
``host.qualify_reasons`` exactly the expected Xen-API error; ``VM.migrate(vm, lab1, lab2, true)``
the same verdict; nothing moved (still defined on lab1 only, its home lab1); then the change that
makes lab2 qualify, and both say true.

- Memory: memory_dynamic_max 1 GiB beyond what the server says lab2 has free or reclaimable
  (``placement.available_memory``) -> HOST_NOT_ENOUGH_FREE_MEMORY [needed, available].  Both lab
  hosts run on this one machine, so their memory is the same pool: lab1 would refuse it too.
- CPU: the guest's ``<cpu mode='custom' match='exact'>`` defined with libvirt on lab1.  Both lab
  hosts run the same QEMU on the same CPU, so nothing real makes libvirt compare a model
  differently on them (qemu.conf has no CPU setting; the one real difference, KVM on one and not
  the other, fails the guest's domain type first, not its CPU model).  So: Haswell, which TCG
  cannot give (compareHypervisorCPU INCOMPATIBLE on both: the reason on lab2, and lab1 refuses it
  too), then Westmere, which TCG gives on both -> qualifies.
- TPM: a vTPM (tpm-crb, emulator backend, 2.0) -> VM_INCOMPATIBLE_WITH_THIS_HOST [vm, lab2, "TPM:
  ..."]; lab1 qualifies, and the guest really boots there with it (QEMU's query-tpm: a tpm-crb
  fed by swtpm).
- Disabled: host.disable(lab2) -> HOST_DISABLED [lab2]; host.enable -> qualifies.
- Network: a network undefined on lab2 behind the server's back (libvirt, then its event) ->
  VM_REQUIRES_NETWORK [vm, network]; lab1 qualifies.
- SR: a disk on lab1's private local SR bigger than lab2's local SR has free -> VM_REQUIRES_SR
  [vm, lab1's SR]; with a small disk instead it qualifies (a migration would copy it).
- Another hypervisor type: the pool is QEMU (lab1, the master, first), so the configured LXC host
  is kept out of it (not live, ``other_config:refused`` says why): qualify false with
  HOST_NOT_LIVE, the dry run false.  A pool never holds a live host of another type, so placement's
  own hypervisor check (VM_INCOMPATIBLE_WITH_THIS_HOST "... cannot run on a LXC host") cannot be
  reached through a pool: what the API shows for such a host is HOST_NOT_LIVE.
"""
from __future__ import annotations

import contextlib
import json
import xml.etree.ElementTree as ET

import pytest

import lxc_libvirtd
from lab_hosts import LabError, LabHosts
from qemu_e2e import E2EServer, serving, tiny_vm_record

pytestmark = pytest.mark.e2e

MiB = 1 << 20
GiB = 1 << 30
PRIVATE_LOCAL_SR = "/var/lib/libvirt/images/xenapi-local"   # inside each lab host's own mount namespace
NO_SWTPM = ("/usr/bin/swtpm", "/usr/bin/swtpm_setup")


@pytest.fixture(scope="module")
def differing_hosts():
    """lab1 with swtpm, lab2 without; and a private LXC libvirtd."""
    why = lxc_libvirtd.missing()
    if why:
        pytest.fail(f"cannot run an LXC libvirtd here: {why}", pytrace=False)
    lab = LabHosts(masked={"lab2": NO_SWTPM})
    lxc = lxc_libvirtd.LxcLibvirtd()
    try:
        lab.start()
        lxc.start()
    except (LabError, RuntimeError) as e:
        lxc.stop()
        lab.stop()
        pytest.fail(f"the lab hosts cannot start: {e}", pytrace=False)
    try:
        yield lab, lxc
    finally:
        lxc.stop()
        lab.stop()


@pytest.fixture(scope="module")
def pool(differing_hosts, tmp_path_factory):
    lab, lxc = differing_hosts
    settings = lab.xenapi_settings()
    settings["libvirt_uris"] = [*settings["libvirt_uris"], lxc.uri]
    with serving(**settings, storage_local_path=PRIVATE_LOCAL_SR,
                 state=str(tmp_path_factory.mktemp("qualify") / "state")) as server:
        yield Pool(lab, lxc, server)


class Pool:
    def __init__(self, lab, lxc, s: E2EServer):
        self.lab, self.lxc, self.s, self.x = lab, lxc, s, s.x
        by_name = {rec["hostname"]: ref for ref, rec in self.x.host.get_all_records().items()}
        self.lab1, self.lab2 = by_name["lab1"], by_name["lab2"]
        self.lxc_host = next(ref for ref, rec in self.x.host.get_all_records().items()
                             if ref not in (self.lab1, self.lab2))

    def local_sr(self, host: str) -> str:
        x = self.x
        return next(ref for ref, rec in x.SR.get_all_records().items()
                    if rec["other_config"].get("i18n-key") == "local-storage"
                    and any(x.PBD.get_host(p) == host for p in rec["PBDs"]))

    @contextlib.contextmanager
    def vm(self, tiny_guest, label: str):
        """A halted VM defined on lab1; destroyed with its disks afterwards."""
        x = self.x
        vm = x.VM.create({**tiny_vm_record(tiny_guest, label), "affinity": self.lab1})
        try:
            assert self.s.server.reconciler.homes[vm] == self.lab1
            yield vm
        finally:
            with contextlib.suppress(Exception):
                if x.VM.get_power_state(vm) != "Halted":
                    x.VM.hard_shutdown(vm)
            for vbd in x.VM.get_VBDs(vm):
                vdi = x.VBD.get_VDI(vbd)
                x.VBD.destroy(vbd)
                with contextlib.suppress(Exception):
                    x.VDI.destroy(vdi)
            for vif in x.VM.get_VIFs(vm):
                x.VIF.destroy(vif)
            x.VM.destroy(vm)

    def defined_on(self, vm: str) -> list[str]:
        """The lab hosts whose libvirt defines ``vm`` (asked there, not the server)."""
        import libvirt
        uuid, found = self.x.VM.get_uuid(vm), []
        for h in self.lab.hosts:
            with contextlib.closing(libvirt.open(h.uri)) as conn:
                try:
                    conn.lookupByUUIDString(uuid)
                    found.append(h.name)
                except libvirt.libvirtError as e:
                    if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise
        return found

    def refused(self, vm: str, reason: list, host: str | None = None) -> None:
        """``host`` (lab2) does not qualify, for exactly ``reason``; the dry run agrees; nothing moved."""
        x, host = self.x, host or self.lab2
        assert x.host.qualify(vm, host) is False
        assert x.host.qualify_reasons(vm, host) == [reason]
        assert x.VM.migrate(vm, self.lab1, host, True) is False
        self.nothing_moved(vm)

    def accepted(self, vm: str) -> None:
        x = self.x
        assert x.host.qualify_reasons(vm, self.lab2) == []
        assert x.host.qualify(vm, self.lab2) is True
        assert x.VM.migrate(vm, self.lab1, self.lab2, True) is True
        self.nothing_moved(vm)

    def nothing_moved(self, vm: str) -> None:
        assert self.x.VM.get_power_state(vm) == "Halted"
        assert self.s.server.reconciler.homes[vm] == self.lab1
        assert self.defined_on(vm) == ["lab1"]

    def redefine_on_lab1(self, vm: str, edit) -> None:
        """Change the VM's domain with libvirt on lab1, behind the server's back (the API has no
        field for a CPU model or a TPM): ``edit(root)`` changes the inactive XML, defined again."""
        import libvirt
        with contextlib.closing(libvirt.open(self.lab.lab1.uri)) as conn:
            dom = conn.lookupByUUIDString(self.x.VM.get_uuid(vm))
            root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            edit(root)
            conn.defineXML(ET.tostring(root, encoding="unicode"))


def _set_cpu(model: str):
    def edit(root):
        for old in root.findall("cpu"):
            root.remove(old)
        cpu = ET.SubElement(root, "cpu", mode="custom", match="exact", check="partial")
        ET.SubElement(cpu, "model", fallback="forbid").text = model
    return edit


def test_memory_beyond_what_the_destination_has(pool, tiny_guest):
    x, placement = pool.x, pool.s.server.placement
    with pool.vm(tiny_guest, "too big for lab2") as vm:
        before = placement.available_memory(pool.lab2)
        needed = (before // MiB) * MiB + GiB
        x.VM.set_memory_limits(vm, str(256 * MiB), str(needed), str(needed), str(needed))
        reasons = x.host.qualify_reasons(vm, pool.lab2)
        after = placement.available_memory(pool.lab2)
        assert len(reasons) == 1 and reasons[0][:2] == ["HOST_NOT_ENOUGH_FREE_MEMORY", str(needed)], reasons
        available = int(reasons[0][2])
        # what lab2's libvirt says is free or reclaimable (the page cache moves a little between reads)
        assert min(before, after) - 256 * MiB <= available <= max(before, after) + 256 * MiB < needed
        assert x.host.qualify(vm, pool.lab2) is False
        assert x.VM.migrate(vm, pool.lab1, pool.lab2, True) is False
        pool.nothing_moved(vm)
        print(f"lab2 available {available / GiB:.2f} GiB, the VM asks {needed / GiB:.2f} GiB")

        x.VM.set_memory_limits(vm, str(256 * MiB), str(256 * MiB), str(256 * MiB), str(256 * MiB))
        pool.accepted(vm)


def test_a_cpu_model_the_hypervisor_cannot_give(pool, tiny_guest):
    x = pool.x
    with pool.vm(tiny_guest, "Haswell guest") as vm:
        pool.redefine_on_lab1(vm, _set_cpu("Haswell"))      # TCG has no AVX2, FMA, BMI...
        pool.refused(vm, ["VM_INCOMPATIBLE_WITH_THIS_HOST", vm, pool.lab2,
                          "CPU: the guest's CPU model or features are not available on this host"])
        assert x.host.qualify(vm, pool.lab1) is False       # the same QEMU: lab1 cannot give it either

        pool.redefine_on_lab1(vm, _set_cpu("Westmere"))     # TCG gives it
        pool.accepted(vm)
        assert x.host.qualify(vm, pool.lab1) is True


def test_a_vtpm_the_destination_cannot_offer(pool, tiny_guest):
    import libvirt
    import libvirt_qemu
    x = pool.x
    lab1 = pool.lab.lab1

    def add_tpm(root):
        tpm = ET.SubElement(root.find("devices"), "tpm", model="tpm-crb")
        ET.SubElement(tpm, "backend", type="emulator", version="2.0")

    with pool.vm(tiny_guest, "vTPM guest") as vm:
        assert x.host.qualify_reasons(vm, pool.lab2) == []
        pool.redefine_on_lab1(vm, add_tpm)
        pool.refused(vm, ["VM_INCOMPATIBLE_WITH_THIS_HOST", vm, pool.lab2,
                          "TPM: the guest has a vTPM and this host offers no TPM emulator (swtpm)"])
        assert x.host.qualify_reasons(vm, pool.lab1) == []
        # the host records say so too (libvirt's domain capabilities on each)
        assert "emulator" in x.host.get_chipset_info(pool.lab1)["tpm_backends"].split()
        assert "emulator" not in x.host.get_chipset_info(pool.lab2)["tpm_backends"].split()
        # and the guest boots on lab1 with its vTPM: QEMU has a tpm-crb fed by an emulator (swtpm)
        x.VM.start_on(vm, pool.lab1, False, False)
        with contextlib.closing(libvirt.open(lab1.uri)) as conn:
            dom = conn.lookupByUUIDString(x.VM.get_uuid(vm))
            answer = json.loads(libvirt_qemu.qemuMonitorCommand(dom, '{"execute": "query-tpm"}', 0))["return"]
        assert [(t["model"], t["options"]["type"]) for t in answer] == [("tpm-crb", "emulator")], answer
        assert lab1.run("pgrep", "-x", "swtpm", check=False).returncode == 0
        x.VM.hard_shutdown(vm)


def test_a_disabled_host(pool, tiny_guest):
    x = pool.x
    with pool.vm(tiny_guest, "disabled destination") as vm:
        x.host.disable(pool.lab2)
        try:
            pool.refused(vm, ["HOST_DISABLED", pool.lab2])
        finally:
            x.host.enable(pool.lab2)
        pool.accepted(vm)


def test_a_network_the_destination_does_not_have(pool, tiny_guest):
    import libvirt
    x = pool.x
    net = x.network.create({"name_label": "lab1 only", "other_config": {}})
    try:
        with pool.vm(tiny_guest, "on a lab1 network") as vm:
            x.VIF.create({"device": "0", "network": net, "VM": vm, "MAC": "", "MTU": "1500", "other_config": {},
                          "qos_algorithm_type": "", "qos_algorithm_params": {}})
            pool.accepted(vm)
            pif2 = next(p for p in x.network.get_PIFs(net) if x.PIF.get_host(p) == pool.lab2)
            pifs = pool.s.events("pif")
            with contextlib.closing(libvirt.open(pool.lab.lab2.uri)) as conn:    # behind the server's back
                lnet = conn.networkLookupByUUIDString(x.network.get_uuid(net))
                if lnet.isActive():
                    lnet.destroy()
                lnet.undefine()
            pifs.wait(lambda e: e["operation"] == "del" and e["ref"] == pif2, what="its PIF on lab2 gone")
            pool.refused(vm, ["VM_REQUIRES_NETWORK", vm, net])
            assert x.host.qualify(vm, pool.lab1) is True
    finally:
        x.network.destroy(net)


def test_a_disk_the_destination_cannot_take(pool, tiny_guest):
    x = pool.x
    sr1, sr2 = pool.local_sr(pool.lab1), pool.local_sr(pool.lab2)
    free2 = int(x.SR.get_physical_size(sr2)) - int(x.SR.get_physical_utilisation(sr2))
    with pool.vm(tiny_guest, "big disk") as vm:
        def attach(size: int) -> str:
            vdi = x.VDI.create({"SR": sr1, "virtual_size": str(size), "type": "user", "sharable": False,
                                "read_only": False, "other_config": {}, "name_label": "data disk"})
            return x.VBD.create({"VM": vm, "VDI": vdi, "userdevice": "0", "bootable": False, "mode": "RW",
                                 "type": "Disk", "empty": False, "other_config": {}, "qos_algorithm_type": "",
                                 "qos_algorithm_params": {}})
        big = attach((free2 // MiB) * MiB + GiB)           # thin on lab1; a copy would not fit on lab2
        pool.refused(vm, ["VM_REQUIRES_SR", vm, sr1])
        assert x.host.qualify(vm, pool.lab1) is True
        vdi = x.VBD.get_VDI(big)
        x.VBD.destroy(big)
        x.VDI.destroy(vdi)
        attach(16 * MiB)                                    # fits on lab2's local SR: a migration copies it
        pool.accepted(vm)


def test_a_host_of_another_hypervisor_type(pool, tiny_guest):
    x = pool.x
    lxc = x.host.get_record(pool.lxc_host)
    assert x.pool.get_other_config(x.pool.get_all()[0])["hypervisor"] == "QEMU"
    assert "LXC" in lxc["other_config"].get("refused", ""), lxc["other_config"]
    assert x.host_metrics.get_live(lxc["metrics"]) is False
    with pool.vm(tiny_guest, "QEMU guest") as vm:
        pool.refused(vm, ["HOST_NOT_LIVE"], host=pool.lxc_host)
        assert pool.lxc_host not in x.VM.get_possible_hosts(vm)
        assert set(x.VM.get_possible_hosts(vm)) == {pool.lab1, pool.lab2}
