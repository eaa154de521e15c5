"""What the network service does on the hosts themselves, beyond libvirt: VLANs, VXLAN tunnels,
and measuring a network's latency (mixed into ``Networks``).

libvirt cannot make VXLAN or 802.1q devices, nor ping; a host's shell can
(``xenapi/backend/host_shell.py``: local for a local URI, ssh for ``qemu+ssh``, or the
``[host_exec]`` prefix configured for the host; libvirt's test driver has none).

- **Tunnels** (xapi's cross-server private networks, over VXLAN here): on each host a VXLAN device
  ``xvx<N>`` joins the network's bridge to the other hosts' tunnels of the same network (one VNI
  per network, unicast peers = the other transport PIFs' addresses).  A libvirt network that is
  restarted loses the device from its bridge; each observation of the host's networks puts it back.
- **VLANs**: with Open vSwitch, a libvirt network ``<vlan><tag>`` on the OVS bridge; with the
  kernel's 802.1q, a VLAN interface ``<device>.<tag>`` under a bridge, and a libvirt network in
  bridge mode over it.  The host's capabilities say which it has (``vlan:openvswitch``,
  ``vlan:8021q``, ``tunnel:vxlan``); with neither, VLAN.create says what is missing.
- **Latency** (the draft's 2.9): ``ping`` from a host with a PIF on the network to its gateway, or
  to ``other_config:latency_target``; every ``[network] latency_interval`` seconds and on demand.
"""
from __future__ import annotations

import logging
import threading
import uuid as uuid_module

from xenapi import errors as E
from xenapi.backend import host_shell, latency, netxml, shaping, vxlan
from xenapi.errors import XenAPIError
from xenapi.state.store import add, delete, derived_ref, mod

log = logging.getLogger(__name__)

LATENCY_TARGET_KEY = "latency_target"
CAP_OVS, CAP_8021Q, CAP_VXLAN = "vlan:openvswitch", "vlan:8021q", "tunnel:vxlan"
CAP_QOS = {shaping.LIBVIRT: "qos:libvirt", shaping.IFB: "qos:ifb"}
_PROBED = (CAP_OVS, CAP_8021Q, CAP_VXLAN, *CAP_QOS.values())
_PROBE_TIMEOUT = 10.0


def vni_of(network_uuid: str) -> int:
    """The VXLAN id of a network's tunnels: the same on every host, from its uuid (1..2^24-1)."""
    return uuid_module.UUID(network_uuid).int % (2 ** 24 - 1) + 1


class HostNetworking:
    """VLANs, tunnels and latency; see the module doc."""

    store: object
    hosts: object
    reconciler: object
    host_exec: dict

    # -- a host's shell and what its kernel has ------------------------------------------------------
    def shell(self, host: str) -> host_shell.HostShell:
        uri = self.hosts.uri_of(host)
        return host_shell.for_uri(uri, self.host_exec.get(uri))

    def _usable_shell(self, host: str) -> host_shell.HostShell:
        shell = self.shell(host)
        if not shell.available:
            raise XenAPIError(E.OPERATION_NOT_ALLOWED, f"no shell on host {host}: {shell.why_not}")
        return shell

    def probe_capabilities(self, host: str) -> list[str]:
        """What the host can build (VLANs through OVS or 802.1q, VXLAN tunnels, rate limits through
        libvirt or ifb), into host.capabilities; once per host and run."""
        self._probed.add(host)
        shell, found = self.shell(host), []
        if shell.available:
            try:
                if shell.run(["ovs-vsctl", "--timeout=2", "show"], timeout=_PROBE_TIMEOUT).returncode == 0:
                    found.append(CAP_OVS)
                if shell.run(["sh", "-c", "test -d /sys/module/8021q || modprobe -q 8021q"],
                             timeout=_PROBE_TIMEOUT).returncode == 0:
                    found.append(CAP_8021Q)
            except host_shell.HostShellError as e:
                log.info("event=capability-probe-failed host=%s error=%s", host, e)
            if vxlan.available(shell)[0]:
                found.append(CAP_VXLAN)
            try:
                if method := shaping.probe(shell):
                    found.append(CAP_QOS[method])
            except host_shell.HostShellError as e:
                log.info("event=qos-probe-failed host=%s error=%s", host, e)
        self.store.modify("host", host, lambda rec: {
            "capabilities": [c for c in rec["capabilities"] if c not in _PROBED] + found})
        return found

    def _capabilities(self, host: str) -> list[str]:
        if host not in self._probed:
            self.probe_capabilities(host)
        return self.store.get("host", host)["capabilities"]

    # -- rate limits --------------------------------------------------------------------------------------
    def qos_method(self, host: str) -> str | None:
        """How ``host`` limits a VIF's rate: libvirt's <bandwidth> (also where the server cannot look:
        no shell, as on the test driver), the server's own ifb shaping, or None (it cannot)."""
        if not self.shell(host).available:
            return shaping.LIBVIRT
        caps = self._capabilities(host)
        return next((method for method, cap in CAP_QOS.items() if cap in caps), None)

    def enforce_qos(self, host: str) -> None:
        """Where the server shapes (ifb): each attached VIF's tap on ``host`` limited to its rate,
        nothing else; only the differences from what was applied are run."""
        if self.qos_method(host) != shaping.IFB:
            return
        with self._shaping_lock:          # the API's change and the observer's may run at once
            self._enforce_qos(host)

    def _enforce_qos(self, host: str) -> None:
        wanted = {}
        for vif in self.store.refs("VIF"):
            rec = self.store.find("VIF", vif)
            target = rec["runtime_properties"].get("target", "") if rec else ""
            if target and rec["currently_attached"] and self.reconciler.homes.get(rec["VM"]) == host:
                if kbps := self.rate_of(rec):
                    wanted[target] = kbps
        applied = self._shaped.setdefault(host, {})
        shell = self.shell(host)
        for tap in [t for t in applied if t not in wanted or applied[t] != wanted[t]]:
            shaping.unshape(shell, tap)
            del applied[tap]
        for tap, kbps in wanted.items():
            if tap not in applied:
                try:
                    shaping.shape(shell, tap, kbps)
                    applied[tap] = kbps
                except (shaping.ShapingError, host_shell.HostShellError) as e:
                    log.warning("event=shaping-failed host=%s tap=%s error=%s", host, tap, e)

    # -- tunnels ----------------------------------------------------------------------------------------
    def tunnel_create(self, ctx, transport_pif: str, network: str, protocol: str = "vxlan") -> str:
        for cls, ref in (("PIF", transport_pif), ("network", network)):
            if not self.store.exists(cls, ref):
                raise XenAPIError(E.HANDLE_INVALID, cls, ref)
        if protocol != "vxlan":
            raise XenAPIError(E.OPENVSWITCH_NOT_ACTIVE)       # GRE tunnels are Open vSwitch's
        pif = self.store.get("PIF", transport_pif)
        if pif["VLAN"] != -1:
            raise XenAPIError(E.PIF_IS_VLAN, transport_pif)
        if pif["tunnel_access_PIF_of"]:
            raise XenAPIError(E.IS_TUNNEL_ACCESS_PIF, transport_pif)
        if not pif["IP"]:
            raise XenAPIError(E.TRANSPORT_PIF_NOT_CONFIGURED, transport_pif)
        host = pif["host"]
        access_ref = self.pif_ref_on(network, host)
        if access_ref is None:
            raise XenAPIError(E.HOST_CANNOT_ATTACH_NETWORK, host, network)
        if any(self.store.get("tunnel", t)["access_PIF"] == access_ref for t in self.store.refs("tunnel")):
            raise XenAPIError(E.OPERATION_NOT_ALLOWED, f"network {network} already has a tunnel on host {host}")
        shell = self._usable_shell(host)
        ok, why = vxlan.available(shell)
        if not ok:
            raise XenAPIError(E.OPERATION_NOT_ALLOWED, f"host {host} cannot make VXLAN tunnels: {why}")
        uuid = str(uuid_module.uuid4())
        ref = derived_ref("tunnel", uuid)
        vni = vni_of(self.store.get("network", network)["uuid"])
        device = vxlan.device_name("xvx", vni)
        status = {"active": "false", "key": str(vni), "device": device}
        self.store.apply([add("tunnel", ref, self.store.new_record("tunnel", {
            "uuid": uuid, "access_PIF": access_ref, "transport_PIF": transport_pif, "status": status,
            "protocol": "vxlan"}))])
        try:
            self._build_tunnel(ref)
        except Exception:
            self.store.apply([delete("tunnel", ref)])
            try:
                vxlan.remove_tunnel(shell, device)
            except Exception:               # the build failed before making it, most likely
                pass
            raise
        mtu = vxlan.tunnel_mtu(pif["MTU"])
        if self.store.get("network", network)["MTU"] > mtu:   # VIFs made from now on fit in the tunnel
            self.store.update("network", network, {"MTU": mtu})
        for other in self._tunnels_of(network):         # the others learn of this host
            if other != ref:
                self._build_tunnel(other, quiet=True)
        return ref

    def _tunnels_of(self, network: str) -> list[str]:
        return [t for t in self.store.refs("tunnel")
                if (pif := self.store.find("PIF", self.store.get("tunnel", t)["access_PIF"])) is not None
                and pif["network"] == network]

    def _build_tunnel(self, ref: str, quiet: bool = False) -> None:
        """Make (or re-make) tunnel ``ref``'s VXLAN device on its host, with every peer of its network."""
        rec = self.store.get("tunnel", ref)
        access, transport = self.store.get("PIF", rec["access_PIF"]), self.store.get("PIF", rec["transport_PIF"])
        peers = [self.store.get("PIF", self.store.get("tunnel", t)["transport_PIF"])["IP"]
                 for t in self._tunnels_of(access["network"]) if t != ref]
        try:
            vxlan.ensure_tunnel(self._usable_shell(access["host"]), rec["status"]["device"],
                                int(rec["status"]["key"]), transport["IP"], peers, access["device"], transport["MTU"])
            status = {**rec["status"], "active": "true"}
            status.pop("error", None)
        except (vxlan.VxlanError, ValueError, host_shell.HostShellError, XenAPIError) as e:
            if not quiet:
                raise XenAPIError(E.OPERATION_NOT_ALLOWED, f"cannot build the tunnel on host {access['host']}: {e}") from None
            status = {**rec["status"], "active": "false", "error": str(e)}
        if status != rec["status"]:
            self.store.apply([mod("tunnel", ref, {"status": status})])

    def tunnel_destroy(self, ctx, ref: str) -> None:
        rec = self.store.get("tunnel", ref)
        access = self.store.find("PIF", rec["access_PIF"])
        if access is not None:
            vxlan.remove_tunnel(self._usable_shell(access["host"]), rec["status"]["device"])
        self.store.apply([delete("tunnel", ref)])
        if access is not None:
            for other in self._tunnels_of(access["network"]):
                self._build_tunnel(other, quiet=True)

    def restore_tunnels(self, host: str) -> None:
        """Tunnels of ``host`` back on their bridges (a restarted libvirt network made a new bridge)."""
        for ref in self.store.refs("tunnel"):
            access = self.store.find("PIF", self.store.get("tunnel", ref)["access_PIF"])
            if access is not None and access["host"] == host and access["currently_attached"]:
                self._build_tunnel(ref, quiet=True)

    def reattach_taps(self, host: str, bridges: set[str]) -> None:
        """Running guests' taps back on their networks' bridges: libvirt does not put them on the
        new bridge of a network restarted while they run."""
        shell = self.shell(host)
        if not shell.available:
            return
        for rec in self.store.records("VIF").values():
            target = rec["runtime_properties"].get("target", "")
            pif = self._pif_on(rec["network"], host) if rec["currently_attached"] and target else None
            if pif is not None and pif["device"] in bridges and self.reconciler.homes.get(rec["VM"]) == host:
                result = shell.run(["ip", "link", "set", target, "master", pif["device"]], timeout=_PROBE_TIMEOUT)
                if result.returncode != 0:
                    log.warning("event=tap-reattach-failed host=%s tap=%s error=%s", host, target, result.stderr.strip())

    # -- VLANs ----------------------------------------------------------------------------------------------
    def vlan_create(self, ctx, tagged_pif: str, tag: int, network: str) -> str:
        for cls, ref in (("PIF", tagged_pif), ("network", network)):
            if not self.store.exists(cls, ref):
                raise XenAPIError(E.HANDLE_INVALID, cls, ref)
        if tag < 0 or tag > 4094:
            raise XenAPIError(E.VLAN_TAG_INVALID, tag)
        pif = self.store.get("PIF", tagged_pif)
        if pif["VLAN"] != -1:
            raise XenAPIError(E.PIF_IS_VLAN, tagged_pif)
        if any(self.store.get("VLAN", v)["tag"] == tag for v in pif["VLAN_slave_of"]):
            raise XenAPIError(E.PIF_VLAN_EXISTS, pif["device"])
        host = pif["host"]
        caps = self._capabilities(host)
        net = self.store.get("network", network)
        if CAP_OVS in caps:
            xml = netxml.network_xml(uuid=net["uuid"], name=f"{net['bridge']}", bridge=pif["device"], mode="bridge",
                                     ovs=True, vlan=tag)
        elif CAP_8021Q in caps:
            xml = self._kernel_vlan(host, pif["device"], tag, net)
        else:
            raise XenAPIError(E.OPERATION_NOT_ALLOWED, f"host {host} can make no VLAN: it has neither Open vSwitch "
                              "(ovs-vsctl) nor the kernel's 802.1q VLAN support (module 8021q)")
        conn = self.hosts.connection(host)
        for p in list(net["PIFs"]):                      # an isolated network of that name goes first
            if self.store.get("PIF", p)["host"] == host and self.reconciler.networks.key_in_store(p):
                conn.undefine_network(net["uuid"])
        conn.define_network(xml)
        self.reconciler.refresh(host, f"{host}/{net['uuid']}", "network")
        untagged_ref = self.pif_ref_on(network, host)
        untagged = self.store.get("PIF", untagged_ref)
        vlan_uuid = str(uuid_module.uuid4())
        ref = derived_ref("VLAN", vlan_uuid)
        self.store.apply([add("VLAN", ref, self.store.new_record("VLAN", {
            "uuid": vlan_uuid, "tagged_PIF": tagged_pif, "untagged_PIF": untagged_ref, "tag": tag})),
            mod("PIF", untagged_ref, {"VLAN_master_of": ref, "VLAN": tag,
                                      "MAC": untagged["MAC"] or "fe:ff:ff:ff:ff:ff"})])
        return ref

    def _kernel_vlan(self, host: str, device: str, tag: int, net: dict) -> str:
        """The 802.1q path: ``<device>.<tag>`` under the network's bridge, made on the host; the
        libvirt network rides that bridge."""
        shell = self._usable_shell(host)
        vlan_device = vxlan.check_device_name(f"{device}.{tag}")
        vxlan.ensure_bridge(shell, net["bridge"], net["MTU"])
        for argv in (["ip", "link", "add", "link", device, "name", vlan_device, "type", "vlan", "id", str(tag)],
                     ["ip", "link", "set", vlan_device, "master", net["bridge"], "up"]):
            result = shell.run(argv, timeout=_PROBE_TIMEOUT)
            if result.returncode != 0 and "File exists" not in result.stderr:
                raise XenAPIError(E.PIF_CONFIGURATION_ERROR, device, result.stderr.strip())
        return netxml.network_xml(uuid=net["uuid"], name=net["bridge"], bridge=net["bridge"], mode="bridge")

    def vlan_destroy(self, ctx, ref: str) -> None:
        rec = self.store.get("VLAN", ref)
        untagged = self.store.find("PIF", rec["untagged_PIF"])
        tagged = self.store.find("PIF", rec["tagged_PIF"])
        if untagged is not None:
            net = self.store.get("network", untagged["network"])
            self.hosts.connection(untagged["host"]).undefine_network(net["uuid"])
            if tagged is not None and CAP_8021Q in self.store.get("host", untagged["host"])["capabilities"]:
                self._usable_shell(untagged["host"]).run(
                    ["ip", "link", "del", f"{tagged['device']}.{rec['tag']}"], timeout=_PROBE_TIMEOUT)
            self.reconciler.refresh(untagged["host"], f"{untagged['host']}/{net['uuid']}", "network")
        self.store.apply([delete("VLAN", ref)])

    def create_vlan_from_pif(self, ctx, pif: str, network: str, tag: int) -> list[str]:
        """pool.create_VLAN_from_PIF: a VLAN on every live host's PIF of ``pif``'s network; all undone
        if one fails."""
        source = self.store.get("PIF", pif)
        made = []
        try:
            for p in self.store.get("network", source["network"])["PIFs"]:
                if self.hosts.live(self.store.get("PIF", p)["host"]):
                    made.append(self.vlan_create(ctx, p, tag, network))
        except XenAPIError:
            for vlan in made:
                try:
                    self.vlan_destroy(ctx, vlan)
                except XenAPIError as e:
                    log.warning("event=vlan-undo-failed vlan=%s error=%s", vlan, e.code)
            raise
        return [self.store.get("VLAN", v)["untagged_PIF"] for v in made]

    # -- latency --------------------------------------------------------------------------------------------
    def network_measure_latency(self, ctx, network: str) -> float:
        rec = self.store.get("network", network)
        target = rec["other_config"].get(LATENCY_TARGET_KEY, "")
        hosts = [pif["host"] for p in rec["PIFs"] if (pif := self.store.find("PIF", p)) is not None
                 and self.hosts.live(pif["host"])]
        if not target:
            for p in rec["PIFs"]:
                pif = self.store.find("PIF", p)
                if pif is not None and pif["IP"]:
                    target = latency.default_target(f"{pif['IP']}/{pif['netmask'] or '255.255.255.0'}") or ""
                    break
        shell = next((s for h in hosts if (s := self.shell(h)).available), None)
        if shell is None or not target:
            why = "no target: set other_config:latency_target" if not target else \
                "no host with a PIF on it has a shell"
            self._record_latency(network, -1.0, target, why, "")
            return -1.0
        m = latency.measure(shell.run, target)
        value = m.rtt_ms if m.rtt_ms is not None else -1.0
        self._record_latency(network, value, target, m.error, m.measured_at.strftime("%Y%m%dT%H:%M:%SZ"))
        return value

    def _record_latency(self, network: str, value: float, target: str, error: str, when: str) -> None:
        def change(rec):
            other = {**rec["other_config"], "latency_measured_against": target, "latency_measured_at": when}
            if error:
                other["latency_error"] = error
            else:
                other.pop("latency_error", None)
            return {"latency": value, "other_config": other}
        self.store.modify("network", network, change)

    def measure_all_latencies(self) -> None:
        for ref, rec in self.store.records("network").items():
            if rec["PIFs"] and (rec["other_config"].get(LATENCY_TARGET_KEY) or
                                any((p := self.store.find("PIF", x)) is not None and p["IP"] for x in rec["PIFs"])):
                try:
                    self.network_measure_latency(None, ref)
                except XenAPIError as e:
                    log.info("event=latency-skipped network=%s error=%s", ref, e.code)


class LatencySampler:
    """Measures every network's latency on a period ([network] latency_interval; 0: never)."""

    def __init__(self, networks: HostNetworking, interval: float):
        self.networks, self.interval = networks, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latency-sampler", daemon=True)

    def start(self) -> None:
        if self.interval > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.networks.measure_all_latencies()
            except Exception:
                log.exception("event=latency-sampling-failed")

