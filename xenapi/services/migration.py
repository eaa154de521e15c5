"""Moving a VM from one host of the pool to another: the engine behind VM.migrate and VM.pool_migrate.

The messages check that the move qualifies (host.qualify, the dry run) and mark the VM's
operation; ``Migration.migrate`` only does it, inside the call's task (progress, cancel):

* **live** (a Running or Paused VM): libvirt's peer-to-peer migration (``migrateToURI3`` with
  PEER2PEER | LIVE | PERSIST_DEST | UNDEFINE_SOURCE): the source's libvirtd dials the
  destination's itself, at the URI ``[migrate_uri]`` gives for it (the server may reach a host
  another way than its peers do: a unix socket here, TCP between them).  The job's progress is
  read from ``jobStats`` while it runs; a cancel aborts the job (``abortJob``) and the VM keeps
  running, unchanged, on the source.  With ``copy_storage``, the disks on SRs the destination
  cannot reach are mirrored (NON_SHARED_DISK, only those disks) into volumes made beforehand in
  the destination's SR, which the destination's definition names; the old volumes are deleted
  once the VM runs there.
* **cold** (a Halted VM): the server moves it itself: each disk the destination cannot reach is
  copied into its SR (``volume_copy``: libvirt's volume streams between hosts; on libvirt's test
  driver, which keeps no data, a new volume of the same size), the definition is written on the
  destination (same uuid, the disks renamed) and undefined on the source; then the old volumes go.

Whatever fails or is cancelled, the VM is where it was, as it was, and nothing made for the move
is left on the destination.  While a VM moves, the reconciler holds libvirt's events about its
domain (the incoming domain, paused on the destination, is not where the VM is); afterwards both
hosts are re-observed, so the call's answer and the events already show the VM on its new host.

The destination SR for copied disks: the pool's default SR if the destination has it plugged,
else the destination's "Local storage" SR.
"""
from __future__ import annotations

import logging
import threading
import time
import xml.etree.ElementTree as ET

import libvirt

from xenapi import errors as E
from xenapi.backend import devices, rewrite
from xenapi.backend.host_shell import HostShellError
from xenapi.errors import XenAPIError
from xenapi.model.types import NULL_REF
from xenapi.observers.volumes import volume_key
from xenapi.services import volume_copy
from xenapi.services.storage import EMBEDDED_POOL, LOCAL_POOL
from xenapi.services.storage_rules import plugged_pbds

log = logging.getLogger(__name__)

LIVE_FLAGS = (libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PERSIST_DEST
              | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
REACH_CACHE = 30.0        # seconds a "can the source dial the destination" answer is kept
REACH_TIMEOUT = 10.0
POLL_SECONDS = 0.1        # how often a live migration's job stats are read (progress, cancel)
# drivers libvirt cannot live-migrate (getType() -> why)
_NO_LIVE = {"TEST": "libvirt's test driver cannot live-migrate",
            "LXC": "libvirt's LXC driver cannot live-migrate containers"}
_RUNS = ("Running", "Paused")


class _Share:
    """The part [start, end) of the task's progress one step of the move reports into."""

    def __init__(self, ctx, start: float, end: float):
        self.ctx, self.start, self.end = ctx, start, end

    def progress(self, value: float) -> None:
        self.ctx.progress(self.start + (self.end - self.start) * max(0.0, min(1.0, value)))

    def check_cancelled(self) -> None:
        self.ctx.check_cancelled()

    def allow_cancel(self, allowed: bool = True) -> None:
        self.ctx.allow_cancel(allowed)


class Migration:
    def __init__(self, store, hosts, reconciler, storage, networks, migrate_uris: dict[str, str]):
        self.store, self.hosts, self.reconciler = store, hosts, reconciler
        self.storage, self.networks = storage, networks
        self.migrate_uris = migrate_uris          # [migrate_uri]: host URI -> the URI its peers dial
        self.last: dict[str, dict] = {}      # VM ref -> the last move's figures (seconds, downtime, ...)
        self._reach: dict[tuple[str, str], tuple[float, tuple[bool, str]]] = {}

    # -- what the dry run asks ---------------------------------------------------------------------
    def live_supported(self, host: str) -> tuple[bool, str]:
        """Whether ``host``'s driver can live-migrate, and why not."""
        facts = self.hosts.facts(host) if host in self.hosts.refs else None
        if facts is None:
            return False, "the host has not been reached yet"
        reason = _NO_LIVE.get(facts.hypervisor)
        return (reason is None), (reason or "")

    def reachable(self, source: str, destination: str) -> tuple[bool, str]:
        """Whether ``source``'s libvirtd can dial ``destination``'s (what a live migration needs):
        ``virsh -c <its migrate URI> uri`` run on the source, through its shell; unknown (True)
        where the source has no shell.  Remembered for REACH_CACHE seconds."""
        key = (source, destination)
        cached = self._reach.get(key)
        if cached is not None and time.monotonic() - cached[0] < REACH_CACHE:
            return cached[1]
        shell = self.networks.shell(source)
        answer = (True, "")
        if shell.available:
            uri = self.destination_uri(destination)
            try:
                done = shell.run(["virsh", "-c", uri, "uri"], timeout=REACH_TIMEOUT)
                if done.returncode != 0:
                    answer = (False, f"the source's libvirtd cannot reach {uri}: "
                                     f"{(done.stderr or done.stdout).strip().splitlines()[-1:] or ['no answer']}"[:300])
            except HostShellError as e:
                answer = (False, f"the source cannot reach {uri}: {e}")
        self._reach[key] = (time.monotonic(), answer)
        return answer

    def forget_reachability(self) -> None:
        """Ask again at the next check (the hosts' network or [migrate_uri] changed)."""
        self._reach.clear()

    def free_name(self, xml: str, uuid: str, destination: str) -> str | None:
        """A libvirt name for the domain on ``destination`` when its own is taken there by another
        domain (Xen-API names need not be unique; libvirt's must), else None."""
        name = ET.fromstring(xml).findtext("name") or ""

        def taken(conn):
            try:
                return conn.lookupByName(name).UUIDString() != uuid
            except libvirt.libvirtError:
                return False
        if name and self.hosts.connection(destination).read("lookup_name", taken):
            return f"{name}-{uuid[:8]}"
        return None

    def destination_uri(self, host: str) -> str:
        """The URI the other hosts' libvirtd dial to reach ``host`` ([migrate_uri], else its own)."""
        uri = self.hosts.uri_of(host)
        return self.migrate_uris.get(uri, uri)

    # -- the move --------------------------------------------------------------------------------------
    def migrate(self, ctx, vm: str, source: str, destination: str, *, live: bool, copy_storage: bool) -> None:
        store = self.store
        rec = store.get("VM", vm)
        uuid = rec["uuid"]
        if source == destination:
            raise XenAPIError(E.VM_MIGRATE_FAILED, vm, source, destination, "the destination is the source")
        state = rec["power_state"]
        if live and state not in _RUNS:
            raise XenAPIError(E.VM_BAD_POWER_STATE, vm, "running", state.lower())
        if not live and state != "Halted":
            raise XenAPIError(E.VM_BAD_POWER_STATE, vm, "halted", state.lower())
        moved = self._disks_to_move(vm, destination)
        if moved and live and not copy_storage:
            vdi, sr = moved[0][1], store.get("VDI", moved[0][1])["SR"]
            raise XenAPIError(E.VM_MIGRATE_FAILED, vm, source, destination,
                              f"VDI {vdi} is on SR {sr}, which the destination cannot reach, and storage is not to be copied")
        t0 = time.monotonic()
        ctx.progress(0.0)
        with self.reconciler.hold(uuid):
            try:
                if live:
                    figures = self._live(ctx, vm, uuid, source, destination, moved)
                else:
                    figures = self._cold(ctx, vm, uuid, source, destination, moved)
            finally:
                self._reobserve(uuid, source, destination)
        figures["seconds"] = time.monotonic() - t0
        self.last[vm] = figures
        log.info("event=vm-migrated vm=%s uuid=%s from=%s to=%s live=%s disks=%d seconds=%.3f downtime_ms=%s",
                 vm, uuid, source, destination, live, len(moved), figures["seconds"], figures.get("downtime_ms", "-"))
        ctx.progress(1.0)

    # -- which disks move, and where to ----------------------------------------------------------------
    def _reachable(self, sr: str, host: str) -> bool:
        store = self.store
        return any(store.get("PBD", p)["host"] == host for p in plugged_pbds(store, sr))

    def _disks_to_move(self, vm: str, destination: str) -> list[tuple[int, str]]:
        """(slot, VDI) of the VM's disks on SRs the destination has no plugged PBD for."""
        store = self.store
        moved = []
        for vbd in store.get("VM", vm)["VBDs"]:
            v = store.get("VBD", vbd)
            if v["VDI"] != NULL_REF and store.exists("VDI", v["VDI"]) and v["userdevice"].isdigit() \
                    and not self._reachable(store.get("VDI", v["VDI"])["SR"], destination):
                moved.append((int(v["userdevice"]), v["VDI"]))
        return sorted(moved)

    def _target_sr(self, vm: str, source: str, destination: str) -> str:
        store = self.store
        pool = next(iter(store.records("pool").values()), None)
        if pool is not None and pool["default_SR"] != NULL_REF and store.exists("SR", pool["default_SR"]) \
                and self._reachable(pool["default_SR"], destination):
            return pool["default_SR"]
        for ref, rec in store.records("SR").items():
            if rec["sm_config"].get("libvirt_pool") in (LOCAL_POOL, EMBEDDED_POOL) and self._reachable(ref, destination):
                return ref
        raise XenAPIError(E.VM_MIGRATE_FAILED, vm, source, destination,
                          "the destination has no SR to copy the VM's disks into (no default or local SR plugged)")

    def _new_volume(self, ctx, vdi: str, sr: str, destination: str, *, copy: bool) -> str:
        """A VDI in ``sr`` (on the destination) for VDI ``vdi``: its data copied (``copy``), or an
        empty volume of its size (a live migration's mirror target; the test driver's copy)."""
        storage = self.storage
        rec = self.store.get("VDI", vdi)
        if copy and self.hosts.facts(destination).hypervisor != "TEST" \
                and self.hosts.facts(storage.volume_of(vdi)[0]).hypervisor != "TEST":
            return volume_copy.copy(storage, ctx, vdi, rec, sr, NULL_REF)
        storage.check_space(sr, rec["virtual_size"])
        return storage.volume_like(destination, sr, rec)

    def _renamed(self, xml: str, destination: str, targets: dict[int, str]) -> str:
        """``xml`` with the disk in each slot of ``targets`` on that VDI's volume on the destination."""
        for slot, vdi in targets.items():
            xml = rewrite.set_source(xml, slot, self.storage.disk_source(destination, vdi))
        return xml

    def _discard(self, vdis) -> None:
        for vdi in vdis:
            try:
                volume_copy._discard(self.storage, vdi)
            except Exception:             # cleanup: logged, the original failure is what the caller gets
                log.exception("event=migration-cleanup-failed vdi=%s", vdi)

    def _delete_old(self, vm: str, vdis) -> None:
        """The source volumes of disks that moved: deleted once the VM is on the destination."""
        storage = self.storage
        for vdi in vdis:
            try:
                host, pool, name = storage.volume_of(vdi)
                self.hosts.connection(host).delete_volume(pool, name)
                self.reconciler.refresh(host, volume_key(pool, name), "volume")
            except XenAPIError as e:
                log.warning("event=migrated-disk-left vm=%s vdi=%s error=%s params=%s", vm, vdi, e.code, e.params)

    # -- cold -----------------------------------------------------------------------------------------
    def _cold(self, ctx, vm: str, uuid: str, source: str, destination: str, moved) -> dict:
        hosts = self.hosts
        src, dst = hosts.connection(source), hosts.connection(destination)
        xml = src.xml(uuid, inactive=True)
        made: dict[int, str] = {}
        defined = False
        try:
            if moved:
                sr = self._target_sr(vm, source, destination)
                ctx.allow_cancel(True)
                try:
                    for n, (slot, vdi) in enumerate(moved):
                        ctx.check_cancelled()
                        share = _Share(ctx, 0.9 * n / len(moved), 0.9 * (n + 1) / len(moved))
                        made[slot] = self._new_volume(share, vdi, sr, destination, copy=True)
                    ctx.check_cancelled()
                finally:
                    ctx.allow_cancel(False)
            if src.domain_state(uuid).power_state != "Halted":     # started behind our back meanwhile
                raise XenAPIError(E.VM_BAD_POWER_STATE, vm, "halted", src.domain_state(uuid).power_state.lower())
            if name := self.free_name(xml, uuid, destination):
                xml = rewrite.set_name(xml, name)
            dst.define(self._renamed(xml, destination, made))
            defined = True
            src.undefine(uuid)
        except BaseException as e:
            if defined:
                try:
                    dst.undefine(uuid)
                except XenAPIError as undo:
                    log.warning("event=migration-undo-failed vm=%s host=%s error=%s", vm, destination, undo.code)
            self._discard(made.values())
            if isinstance(e, XenAPIError) and e.code in (E.BACKEND_FAILURE, E.HOST_NOT_LIVE):
                raise XenAPIError(E.VM_MIGRATE_FAILED, vm, source, destination, _message(e)) from e
            raise
        self._delete_old(vm, [vdi for _, vdi in moved])
        return {"disks": len(moved)}

    # -- live -----------------------------------------------------------------------------------------
    def _live(self, ctx, vm: str, uuid: str, source: str, destination: str, moved) -> dict:
        hosts = self.hosts
        src = hosts.connection(source)
        hosts.connection(destination)                 # live, or HOST_OFFLINE before anything starts
        ok, why = self.live_supported(source)
        if not ok:
            raise XenAPIError(E.VM_MIGRATE_FAILED, vm, source, destination, why)
        now = src.domain_state(uuid).power_state        # stopped behind our back since the check
        if now not in _RUNS:
            raise XenAPIError(E.VM_BAD_POWER_STATE, vm, "running", now.lower())
        made: dict[int, str] = {}
        try:
            params: dict = {}
            if name := self.free_name(src.xml(uuid, inactive=True), uuid, destination):
                params[libvirt.VIR_MIGRATE_PARAM_DEST_NAME] = name
            flags = LIVE_FLAGS
            if moved:
                sr = self._target_sr(vm, source, destination)
                for slot, vdi in moved:
                    made[slot] = self._new_volume(ctx, vdi, sr, destination, copy=False)
                live_xml = src.read("migratable_xml", lambda conn: conn.lookupByUUIDString(uuid).XMLDesc(
                    libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_MIGRATABLE))
                params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = self._renamed(live_xml, destination, made)
                params[libvirt.VIR_MIGRATE_PARAM_PERSIST_XML] = self._renamed(
                    src.xml(uuid, inactive=True), destination, made)
                params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = [_target_dev(live_xml, slot) for slot in made]
                flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
            self._run_live(ctx, vm, uuid, source, destination, params, flags)
        except BaseException:
            self._discard(made.values())
            raise
        self._delete_old(vm, [vdi for _, vdi in moved])
        figures = {"disks": len(moved)}
        try:
            done = hosts.connection(destination).completed_job_stats(uuid)
            if "downtime" in done:
                figures["downtime_ms"] = done["downtime"]
            if "time_elapsed" in done:
                figures["job_ms"] = done["time_elapsed"]
        except XenAPIError:
            pass
        return figures

    def _run_live(self, ctx, vm: str, uuid: str, source: str, destination: str, params: dict, flags: int) -> None:
        """migrateToURI3 on a thread; this one reports the job's progress and turns a cancel into
        abortJob."""
        src = self.hosts.connection(source)
        dest_uri = self.destination_uri(destination)
        outcome: dict = {}

        def run():
            try:
                src.migrate(uuid, dest_uri, params, flags)
            except BaseException as e:           # handed to the task's thread
                outcome["error"] = e
        worker = threading.Thread(target=run, name=f"migrate-{uuid[:8]}", daemon=True)
        cancelled: XenAPIError | None = None
        ctx.allow_cancel(True)
        try:
            worker.start()
            while worker.is_alive():
                worker.join(POLL_SECONDS)
                if not worker.is_alive():
                    break
                if cancelled is None:
                    try:
                        ctx.check_cancelled()
                    except XenAPIError as e:
                        cancelled = e
                        try:
                            src.abort_job(uuid)
                        except XenAPIError as abort_error:
                            log.warning("event=migration-abort-failed vm=%s error=%s", vm, abort_error.code)
                        continue
                    try:
                        ctx.progress(min(0.99, _fraction(src.job_stats(uuid))))
                    except XenAPIError:
                        pass                         # the job ended between two reads
        finally:
            ctx.allow_cancel(False)
        error = outcome.get("error")
        if error is None:
            return                                    # done, even if a cancel came too late to stop it
        if cancelled is not None:
            raise cancelled from error
        try:                                          # stopped behind our back while it moved
            now = src.domain_state(uuid).power_state
        except XenAPIError:
            now = None                                # the source's libvirtd is gone: the error says so
        if now is not None and now not in _RUNS:
            raise XenAPIError(E.VM_BAD_POWER_STATE, vm, "running", now.lower()) from error
        if isinstance(error, XenAPIError):
            raise XenAPIError(E.VM_MIGRATE_FAILED, vm, source, destination, _message(error)) from error
        raise error

    # -- afterwards -----------------------------------------------------------------------------------
    def _reobserve(self, uuid: str, source: str, destination: str) -> None:
        """Re-read the domain on both hosts (the destination first: where it should be now), so
        VM.resident_on, host.resident_VMs and the reconciler's homes follow it."""
        for host in (destination, source):
            try:
                self.reconciler.refresh(host, uuid)
            except XenAPIError as e:
                log.warning("event=migration-reobserve-failed host=%s uuid=%s error=%s", host, uuid, e.code)


def _fraction(stats: dict) -> float:
    total = stats.get("data_total", 0) + stats.get("disk_total", 0)
    done = stats.get("data_processed", 0) + stats.get("disk_processed", 0)
    return done / total if total else 0.0


def _message(e: XenAPIError) -> str:
    """A libvirt failure's message (BACKEND_FAILURE [uri, operation, code, message]), else the code."""
    if e.code == E.BACKEND_FAILURE and len(e.params) >= 4:
        return e.params[3]
    if e.code == E.HOST_NOT_LIVE:
        return "a host's libvirtd stopped answering"
    return " ".join(e.description)


def _target_dev(xml: str, slot: int) -> str:
    """The target device name (vda, hdb) of the disk in ``slot`` of a domain's XML."""
    root = rewrite._load(xml)
    for element in root.iterfind("devices/disk"):
        if devices.slot_of(element) == slot:
            return element.find("target").get("dev")
    raise XenAPIError(E.INTERNAL_ERROR, f"no disk in slot {slot}")
