"""The server: its parts, wired once, started in order, stopped in reverse.

Start-up order matters: persisted objects are loaded, libvirt's event loop runs, then every host
is connected and listed side by side.  Start-up waits for that first sync at most
``[libvirt] sync_wait`` seconds, so a small pool is served complete while a big one (thousands
of domains) is served at once with what is known: a host still being listed says so in its
record (``other_config:libvirt_sync``) and its VMs arrive as ordinary events.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading

from auth.audit import AuditLog
from auth.grants import Access
from auth.keys import Keys
from auth.rbac import all_permissions, role_permissions
from auth.throttle import LoginThrottle
from auth.users import Users, user_record, user_ref
from xenapi.backend.events import ensure_event_loop
from xenapi.config import Config
from xenapi.dispatcher import Dispatcher
from xenapi.state.events import Events
from xenapi.services.hosts import Hosts
from xenapi.metrics import Metrics
from xenapi.services.evacuation import Evacuation
from xenapi.model.roles import DESCRIPTIONS, LADDER, role_ref, role_uuid
from xenapi.observers.polling import StoragePoller
from xenapi.context import Context, Identity, Services
from xenapi.observers.domains import DomainObserver
from xenapi.observers.networks import NetworkObserver
from xenapi.observers.nics import NicObserver
from xenapi.observers.pools import PoolObserver
from xenapi.observers.reconciler import Reconciler
from xenapi.observers.volumes import VolumeObserver
from xenapi.services.host_networking import LatencySampler
from xenapi.services.migration import Migration
from xenapi.services.moves import Moves
from xenapi.services.networks import Networks
from xenapi.services.placement import Placement
from xenapi.services.security_groups import SecurityGroups
from xenapi.services.templates import PXE
from xenapi.services.storage import POOL_REF, Storage
from xenapi.state.sessions import Sessions
from xenapi.state.store import Store, add, derived_uuid, mod
from xenapi.state.tasks import Tasks
from xenapi.services.vms import VMs

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3           # glibc's mallopt parameter
LARGE_ALLOCATION = 1 << 20


def return_large_allocations() -> None:
    """Have glibc give every allocation of 1 MiB or more back to the system when it is freed.

    Each password check (scrypt) allocates 16 MiB.  glibc's threshold for serving an allocation
    from its own mapping grows to the largest one freed, so after the first check such blocks
    come from the per-thread heaps and stay there: a soak's concurrent logins left the server at
    500 MiB of RSS within 30 s (16 threads of scrypt: 15 -> 271 MiB; with a fixed threshold, 15).
    Fixing the threshold keeps that memory out of the server's footprint."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if not libc.mallopt(_M_MMAP_THRESHOLD, LARGE_ALLOCATION):
            log.info("event=mallopt-refused parameter=M_MMAP_THRESHOLD")
    except (OSError, AttributeError):       # not glibc (musl has no mallopt): nothing to tune
        pass
HOUSEKEEPING_SECONDS = 60.0


class Server:
    """The composition root: every part is built here and handed the parts it uses, in the order
    they depend on each other (read top to bottom, it is the server's dependency graph)."""

    def __init__(self, config: Config, registry=None):
        if registry is None:
            from classes import REGISTRY as registry
        self.config = config
        self.registry = registry
        self._stop = threading.Event()
        store = self.store = Store(registry.classes, config.database, config.event_log_size, registry.relations)
        self.users = Users(store.db, store.db_lock)
        self.keys = Keys(store.db, store.db_lock)
        self.metrics = Metrics()
        self.audit = AuditLog(store.db, store.db_lock, config.audit_keep)

        # libvirt's side: the hosts' connections, and the reconciler that shows what they report
        hosts = self.hosts = Hosts(
            store, config.libvirt_uris, domain_type=config.domain_type, open_timeout=config.libvirt_open_timeout,
            keepalive=(config.libvirt_keepalive_interval, config.libvirt_keepalive_count),
            sync_wait=config.libvirt_sync_wait, metrics_interval=config.metrics_interval)
        self.master_ref = hosts.master
        reconciler = self.reconciler = Reconciler(store, hosts, self._stop)
        hosts.report_to(reconciler)
        storage = self.storage = Storage(store, hosts, reconciler, local_path=config.storage_local_path,
                                         state=config.state)
        networks = self.networks = Networks(store, hosts, reconciler, config.host_exec)
        network_observer = NetworkObserver(store, networks)
        volume_observer = VolumeObserver(store, hosts, storage)
        reconciler.drive(networks=network_observer, nics=NicObserver(store, networks, network_observer),
                         pools=PoolObserver(store, hosts, storage), volumes=volume_observer,
                         domains=DomainObserver(store, hosts, storage, networks, volume_observer))
        hosts.when_listed(storage.host_listed)

        # the services the messages call
        pxe = PXE(store, hosts, networks, config.host_exec)
        self.vms = VMs(store, hosts, reconciler, storage, pxe, state=config.state, xen_boot=config.xen_boot,
                       clean_shutdown_timeout=config.clean_shutdown_timeout)
        placement = self.placement = Placement(store, hosts, networks)
        hosts.when_removed(placement.forget_host)
        self.migration = Migration(store, hosts, reconciler, storage, networks, config.migrate_uris)
        self.moves = Moves(store, hosts, reconciler, placement, self.migration)
        self.evacuation = Evacuation(store, hosts, placement, self.moves)
        self.security_groups = SecurityGroups(store, hosts, networks)
        self.latency_sampler = LatencySampler(networks, config.network_latency_interval)
        self.storage_poller = StoragePoller(store, hosts, reconciler, self._stop, config.storage_poll_interval,
                                            config.storage_resync_interval)

        # who may call what, and the calls themselves
        self.access = Access(store, registry)
        throttle = LoginThrottle(config.login_failures_per_user, config.login_failures_per_source,
                                 config.login_failure_window, config.login_lockout, max_wait=config.login_wait)
        self.sessions = Sessions(store, self.users, self.access, self.audit, registry, throttle,
                                 this_host=self.master_ref, idle_timeout=config.idle_timeout,
                                 max_per_user=config.max_per_user)
        self.tasks = Tasks(store, self.master_ref, config.task_keep_seconds, config.task_keep_count)
        self.events = Events(store, registry, self.access, self.sessions, self._stop)
        self.sessions.when_closed(self.events.forget)
        self.services = Services(
            store=store, registry=registry, tasks=self.tasks, sessions=self.sessions, events=self.events,
            users=self.users, audit=self.audit, access=self.access, hosts=hosts, vms=self.vms, storage=storage,
            networks=networks, security_groups=self.security_groups, placement=placement, moves=self.moves,
            evacuation=self.evacuation)
        self.dispatcher = Dispatcher(self.services, self.metrics)

    def context(self, session_ref=None, user: str = "", permissions=frozenset(), identity=None) -> Context:
        """The context of a call: who makes it, and the services it may use."""
        return Context(self.services, session_ref, user, permissions, identity or Identity())

    def start(self) -> None:
        return_large_allocations()
        ensure_event_loop()
        loaded = self.store.load()
        self.sessions.restore()
        self.tasks.fail_orphans()
        self._publish_static()
        self.reconciler.claim_loaded()
        self.reconciler.start()
        self.hosts.start()
        self.storage_poller.start()
        self.latency_sampler.start()
        if not self.hosts.wait_settled(self.config.libvirt_sync_wait):
            log.info("event=serving-before-sync wait=%gs", self.config.libvirt_sync_wait)
        threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True).start()
        log.info("event=started hosts=%d objects_loaded=%d vms=%d", len(self.hosts.refs), loaded,
                 self.store.count("VM"))

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def drain(self) -> None:
        """Answer the long polls (event.from, event.next) now, so the transports can close their
        connections at once instead of waiting out a client's 60 s timeout."""
        self._stop.set()
        self.store.wake()

    def stop(self) -> None:
        self.drain()
        self.storage_poller.stop()
        self.latency_sampler.stop()
        self.hosts.stop()
        self.reconciler.stop()
        self.store.close()

    def _publish_static(self) -> None:
        """The pool, the roles, the users and the storage plugins (SM): objects that exist because
        the server does."""
        ops = []
        pool = self.store.find("pool", POOL_REF)
        if pool is None:
            ops.append(add("pool", POOL_REF, self.store.new_record("pool", {
                "uuid": derived_uuid("pool", "pool"), "master": self.master_ref})))
        elif pool["master"] != self.master_ref:
            ops.append(mod("pool", POOL_REF, {"master": self.master_ref}))
        permissions = all_permissions(self.registry)
        for name in permissions:
            ops.append(add("role", role_ref(name), self.store.new_record("role", {
                "uuid": role_uuid(name), "name_label": name, "is_internal": True,
                "name_description": f"Permission to call {name}"})))
        for name in LADDER:
            ops.append(add("role", role_ref(name), self.store.new_record("role", {
                "uuid": role_uuid(name), "name_label": name, "name_description": DESCRIPTIONS[name],
                "subroles": sorted(role_ref(p) for p in role_permissions(self.registry, name))})))
        for user in self.users.all():
            ops.append(add("user", user_ref(user.name), user_record(self.store, user)))
        ops += self.storage.publish_plugins()
        self.store.apply(ops)

    def _housekeeping(self) -> None:
        while not self._stop.wait(HOUSEKEEPING_SECONDS):
            try:
                self.sessions.sweep()
                self.tasks.collect()
            except Exception:
                log.exception("event=housekeeping-failed")
