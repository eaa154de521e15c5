"""A VDI's data over HTTP, as xapi serves it: ``PUT /import_raw_vdi`` writes the request body into a
VDI, ``GET /export_raw_vdi`` sends a VDI's data (Xen Orchestra uploads ISOs and disks this way;
xapi's scripts import and export with them).

    PUT /import_raw_vdi?vdi=<ref or uuid>&session_id=<ref>[&task_id=<ref>][&format=raw|qcow2]
    GET /export_raw_vdi?vdi=<ref or uuid>&session_id=<ref>[&task_id=<ref>][&format=raw|qcow2]

``format=raw`` (the default, as in xapi) is the disk's bytes as the guest sees them; ``qcow2`` a qcow2
image without backing file.  Whatever the volume's own format: a raw body into a qcow2 VDI leaves a
valid qcow2 holding that data, and a raw export of a qcow2 VDI is the guest's bytes.  Other formats
(xapi's vhd, tar, its ``chunked`` sparse encoding) are refused with 400 and the reason.

How the bytes travel, on libvirt alone so that a remote host works as a local one:

* Formats that match are written and read in place: libvirt's stream upload into the VDI's own volume
  (raw into raw; a qcow2 body into a qcow2 VDI, its header checked before a byte is written: no
  backing or external data file, not encrypted, not bigger than the VDI), and download from it.  The
  VDI keeps its volume, so its identity (the volume name ``<uuid>.qcow2``), VBDs and paths stay.
* Formats that differ go through a temporary volume in the same pool: the body is uploaded into it,
  then copied into the VDI's volume, converted: with ``qemu-img convert -n`` into the volume's file
  in place where both are files this process can reach (a local libvirtd), else by libvirt
  (``createXMLFrom`` into a second temporary volume in the VDI's format, whose bytes are then
  streamed into the VDI's volume).  An export converts into a temporary volume and sends that.
  Temporary volumes are named ``<uuid>.raw``/``.qcow2``, show meanwhile as unmanaged read-only VDIs
  named after the upload, and are deleted however the transfer ends.

Failure: a body cut off, a stall past ``body_timeout`` or a refused image leaves a converted VDI as
it was (the temporary volume goes) and the task (``task_id``) failed.  An in-place write that fails
after its first byte has changed the VDI: its task fails, and the VDI's
``other_config:xenapi_import_failed`` says when and why until the next import into it succeeds.
A body shorter than the VDI fills its start: the rest keeps its bytes when written in place (as in
xapi), and reads as zeros when converted.

HTTP answers: 200 (empty body) once the data is in; 400 bad parameters or image; 401 (with a
``WWW-Authenticate`` challenge) without a valid session (``session_id`` in the query or a cookie, or
HTTP basic auth of a local user); 403 when the session's role may not (import: VDI.create's roles,
vm-admin and up, as xapi's ``http/put_import_raw_vdi``; export: whoever may read the VDI); 404 unknown
VDI; 409 the VDI attached to a running VM (import: in any mode; export: read-write) or busy with
another operation (VDI_IN_USE, OTHER_OPERATION_IN_PROGRESS), or the task cancelled; 413 a body
bigger than the VDI; 501 storage libvirt cannot stream (rbd, iscsi) or a volume format other than
raw and qcow2; 503 no live host has the SR.  The body of an error is the Xen-API error, code first.

While a transfer runs the VDI shows it in ``current_operations`` (an import as ``blocked``, which
keeps every other operation off it; an export as ``copy``, which only keeps imports and the like
off), and the given task's ``progress`` follows the bytes; the task may be cancelled
(``task.cancel``) during an import's upload.  The task ends as xapi ends it: success (an import's
result is the VDI's ref) or failure with the error.

On libvirt's test driver, whose volumes hold no data and which cannot stream, an upload is read to
its end and dropped and a download is zeros: the protocol, the checks and the temporary volumes
behave as on a real host.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import struct
import subprocess
import threading
import time
import uuid as _uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator
from urllib.parse import parse_qs, urlparse

from auth.rbac import EXTRA_PERMISSIONS, TASK_ANY, denied, role_permissions
from xenapi import errors as E
from xenapi.backend.storage_operations import STREAM_CHUNK, VolumeState
from xenapi.context import Context, Identity
from xenapi.errors import XenAPIError
from xenapi.exporter import _basic_credentials
from xenapi.observers.volumes import vdi_ref, volume_key
from xenapi.state.operations import guard
from xenapi.transport.http import Body, BodyError, Request, Response
from xenapi.wire.values import DateTime

if TYPE_CHECKING:
    from auth.audit import AuditLog
    from auth.grants import Access
    from xenapi.model.registry import Registry
    from xenapi.observers.reconciler import Reconciler
    from xenapi.services.hosts import Hosts
    from xenapi.services.storage import Storage
    from xenapi.state.sessions import Sessions
    from xenapi.state.store import Store
    from xenapi.state.tasks import Tasks

log = logging.getLogger(__name__)

FORMATS = ("raw", "qcow2")
FAILED_KEY = "xenapi_import_failed"             # VDI.other_config: an in-place import that failed
IMPORT_PERMISSION = "http/put_import_raw_vdi"   # xapi's names for the two HTTP actions
EXPORT_PERMISSION = "http/get_export_raw_vdi"
_VOLUME_KINDS = {"raw": "raw", "iso": "raw", "": "raw", "none": "raw", "qcow2": "qcow2"}
_CHALLENGE = ("WWW-Authenticate", 'Basic realm="xenapi", charset="UTF-8"')
_PROGRESS_STEP = 0.01                           # of a task's progress between two writes
_QCOW2_HEAD = 512                               # bytes read before a qcow2 body's header is judged
_QEMU_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
_STATUS = {E.SESSION_INVALID: 401, E.SESSION_AUTHENTICATION_FAILED: 401, E.RBAC_PERMISSION_DENIED: 403,
           E.HANDLE_INVALID: 404, E.UUID_INVALID: 404, E.VDI_MISSING: 404,
           E.VDI_IN_USE: 409, E.OTHER_OPERATION_IN_PROGRESS: 409, E.TASK_CANCELLED: 409,
           E.VDI_TOO_SMALL: 413, E.SR_OPERATION_NOT_SUPPORTED: 501, E.SR_UNKNOWN_DRIVER: 501,
           E.SR_HAS_NO_PBDS: 503, E.HOST_OFFLINE: 503, E.HOST_NOT_LIVE: 503, E.TOO_BUSY: 503}


class Refusal(Exception):
    """An answer other than 200: its status and text (and a Xen-API error, when it is one)."""

    def __init__(self, status: int, text: str, error: XenAPIError | None = None):
        super().__init__(text)
        self.status, self.text, self.error = status, text, error

    def failure(self) -> XenAPIError:
        """What the transfer's task ends with."""
        return self.error or XenAPIError(E.INTERNAL_ERROR, self.text)

    @classmethod
    def of(cls, error: XenAPIError) -> "Refusal":
        return cls(_STATUS.get(error.code, 500), " ".join(str(p) for p in error.description), error)

    def response(self) -> Response:
        headers = [_CHALLENGE] if self.status == 401 else []
        return Response(self.status, "text/plain", f"{self.text}\n".encode(), headers)


@dataclass(frozen=True)
class TransferParts:
    """What the transfers use: ``sessions`` and ``make_context`` (the caller's Context, by its
    session or HTTP basic auth: ``make_context(session_ref, user, permissions, identity)``) to
    know who asks, ``registry`` and ``access`` whether they may, ``store``, ``storage``, ``hosts``
    and ``reconciler`` for the VDI and its volumes, ``tasks`` for the task, ``audit`` for an import."""
    sessions: Sessions
    make_context: Callable[[str | None, str, frozenset[str], Identity], Context]
    registry: Registry
    access: Access
    store: Store
    storage: Storage
    hosts: Hosts
    reconciler: Reconciler
    tasks: Tasks
    audit: AuditLog


@dataclass
class Transfer:
    """One import or export: who asks, which VDI, its volume, and what has happened so far."""
    parts: TransferParts
    ctx: Context
    action: str                    # "import" or "export"
    vdi: str
    uuid: str
    fmt: str                       # of the body
    task: str | None
    host: str = ""
    pool: str = ""
    volume: VolumeState | None = None
    kind: str = ""                 # of the volume: raw or qcow2
    test: bool = False             # libvirt's test driver: no data, no streams
    marker: str = ""
    temporaries: list[str] = field(default_factory=list)
    bytes: int = 0
    total: int = 0                 # expected bytes (0: unknown), for the task's progress
    share: float = 1.0             # of the task's progress the bytes stand for
    touched: bool = False          # the VDI's own volume has been written
    _noted: float = 0.0

    @property
    def conn(self):
        return self.parts.hosts.connection(self.host)

    @property
    def store(self):
        return self.parts.store

    # -- progress and cancel ------------------------------------------------------------------------
    def progress(self, value: float | None = None, *, force: bool = False) -> None:
        """The task's progress: ``value``, else the share the bytes so far stand for (written when
        it moved by a hundredth: a hundred writes and events at most); a cancelled task stops an
        import here."""
        if self.task is None:
            return
        if value is None:
            value = self.share * min(1.0, self.bytes / self.total) if self.total else 0.0
        value = min(value, 0.99)
        if force or value >= self._noted + _PROGRESS_STEP:
            self._noted = value
            self.parts.tasks.progress(self.task, value)
        if self.action == "import":
            self.ctx.check_cancelled()

    def finish(self, error: XenAPIError | None, result: str = "") -> None:
        if self.task is None or not self.store.exists("task", self.task):
            return
        if error is None:
            self.parts.tasks.succeed(self.task, result)
        else:
            self.parts.tasks.fail(self.task, error)

    # -- volumes --------------------------------------------------------------------------------------
    def temporary(self, fmt: str, *, copy_of: str | None = None) -> str:
        """A new volume in the VDI's pool (empty, of the VDI's size, or a converted copy of volume
        ``copy_of``), shown as an unmanaged read-only VDI while it exists."""
        plugin = self.parts.storage.plugin(self.store.get("VDI", self.vdi)["SR"])
        uuid = str(_uuid.uuid4())
        name = uuid + ((".qcow2" if fmt == "qcow2" else ".raw") if plugin.extension else "")
        xml = (f"<volume><name>{name}</name><capacity unit='bytes'>{self.volume.capacity}</capacity>"
               f"<allocation unit='bytes'>0</allocation><target><format type='{fmt}'/></target></volume>")
        label = self.store.get("VDI", self.vdi)["name_label"]
        ref = vdi_ref(uuid)
        self.parts.reconciler.volumes.expect(ref, {
            "name_label": f"{label} ({self.action} in progress)", "managed": False, "read_only": True,
            "name_description": f"temporary volume of an {self.action} of VDI {self.uuid}; deleted when it ends",
            "other_config": {"xenapi_temporary": self.action}})
        self.temporaries.append(name)
        try:
            if copy_of is None:
                self.conn.create_volume(self.pool, xml)
            else:
                self.conn.copy_volume(self.pool, copy_of, self.pool, xml)
        except BaseException:
            self.temporaries.remove(name)
            self.parts.reconciler.volumes.unexpect(ref)
            raise
        self._observe(name)
        return name

    def discard(self, name: str) -> None:
        """Delete a temporary volume (a failure is logged: nothing else can be done about it)."""
        if name not in self.temporaries:
            return
        self.temporaries.remove(name)
        try:
            self.conn.delete_volume(self.pool, name)
        except XenAPIError as e:
            log.warning("event=transfer-cleanup-failed vdi=%s volume=%s error=%s", self.uuid, name,
                        " ".join(map(str, e.description)))
        self.parts.reconciler.volumes.unexpect(vdi_ref(name.split(".", 1)[0]))
        self._observe(name)

    def cleanup(self) -> None:
        for name in list(self.temporaries):
            self.discard(name)

    def state(self, name: str) -> VolumeState:
        return self.conn.volume_state(self.pool, name)

    def refresh_pool(self) -> None:
        """libvirt re-reads the pool's files (a format, size or backing file changed by a write);
        it refuses while it builds a volume in the pool, which only delays what it shows."""
        try:
            self.conn.refresh_pool(self.pool)
        except XenAPIError as e:
            log.info("event=pool-refresh-deferred vdi=%s error=%s", self.uuid, " ".join(map(str, e.description)))

    def _observe(self, name: str) -> None:
        try:
            self.parts.reconciler.refresh(self.host, volume_key(self.pool, name), "volume")
        except XenAPIError as e:
            log.info("event=volume-refresh-failed vdi=%s volume=%s error=%s", self.uuid, name, e.code)

    def local_files(self, *names: str) -> bool:
        """The volumes are files this process may read and write (a local libvirtd), and qemu-img is here."""
        if self.test or urlparse(self.parts.hosts.uri_of(self.host)).hostname or not shutil.which("qemu-img"):
            return False
        paths = [self.state(name).path for name in names]
        return all(os.path.isfile(p) and os.access(p, os.R_OK | os.W_OK) for p in paths)

    # -- data ------------------------------------------------------------------------------------------
    def writer(self, name: str):
        """A context manager yielding write(bytes) into volume ``name`` (dropped on the test driver)."""
        if self.test:
            return _Nothing(lambda data: None)
        return self.conn.upload_volume(self.pool, name)

    def reader(self, name: str):
        """A context manager yielding the chunks of volume ``name`` (zeros on the test driver)."""
        if self.test:
            return _Nothing(_zeros(self.state(name).capacity))
        return self.conn.download_volume(self.pool, name)


class _Nothing:
    def __init__(self, value):
        self.value = value

    def __enter__(self):
        return self.value

    def __exit__(self, *exc):
        return False


def _zeros(size: int) -> Iterator[bytes]:
    block = bytes(STREAM_CHUNK)
    while size > 0:
        yield block[:size] if size < len(block) else block
        size -= len(block)


# ------------------------------------------------------------------ who, what, and may they ---

def _param(query: dict[str, list[str]], cookies: dict[str, str], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else cookies.get(name)


def _cookies(header: str) -> dict[str, str]:
    out = {}
    for part in header.split(";"):
        name, eq, value = part.strip().partition("=")
        if eq:
            out.setdefault(name, value.strip('"'))
    return out


def _begin(parts: TransferParts, request: Request, identity: Identity, action: str) -> Transfer:
    """Check the request (session, parameters, rights, the task) and return its Transfer; raises
    Refusal."""
    query = parse_qs(request.query, keep_blank_values=True)
    cookies = _cookies(request.headers.get("cookie", ""))
    ctx = _authenticate(parts, query, cookies, request, identity)
    if "chunked" in query:
        raise Refusal(400, "xapi's chunked sparse encoding is not supported: send the disk's bytes (format=raw) "
                           "or a qcow2 image (format=qcow2)")
    fmt = (_param(query, cookies, "format") or "raw").lower()
    if fmt not in FORMATS:
        raise Refusal(400, f"format {fmt[:40]!r} is not supported: format=raw (the disk's bytes) or format=qcow2")
    given = _param(query, cookies, "vdi")
    if not given:
        raise Refusal(400, "the vdi parameter (a VDI's ref or uuid) is required")
    store = parts.store
    vdi = given if store.exists("VDI", given) else (store.find_uuid("VDI", given) or given)
    registry = parts.registry
    if action == "import":
        msg = registry.lookup("VDI.create")[0]
        if msg.permission not in ctx.permissions:
            raise Refusal.of(denied(IMPORT_PERMISSION, msg.roles))
    else:
        msg = registry.lookup("VDI.get_record")[0]
        if msg.permission not in ctx.permissions:
            try:
                parts.access.authorize(ctx, msg, [vdi], msg.permission, msg.roles)
            except XenAPIError:
                raise Refusal.of(denied(EXPORT_PERMISSION, msg.roles)) from None
    rec = store.find("VDI", vdi)
    if rec is None:
        raise Refusal(404, f"HANDLE_INVALID VDI {given[:80]}", XenAPIError(E.HANDLE_INVALID, "VDI", given))
    task = _param(query, cookies, "task_id") or None
    if task is not None:
        trec = store.find("task", task)
        if trec is None:
            raise Refusal(400, f"task_id {task[:80]} is not a task")
        if trec["other_config"].get("owner") != ctx.user and TASK_ANY not in ctx.permissions:
            raise Refusal.of(denied(TASK_ANY, EXTRA_PERMISSIONS[TASK_ANY]))
        if trec["status"] != "pending":
            raise Refusal(400, f"task {task} has already finished ({trec['status']})")
        ctx.task_ref = task
    return Transfer(parts, ctx, action, vdi, rec["uuid"], fmt, task)


def _locate(transfer: Transfer) -> None:
    """The VDI's host, pool and volume, and whether libvirt can stream it; raises Refusal."""
    parts, vdi = transfer.parts, transfer.vdi
    rec = parts.store.get("VDI", vdi)
    storage = parts.storage
    try:
        plugin = storage.plugin(rec["SR"])
        if not plugin.transfer:
            raise Refusal(501, f"SR_OPERATION_NOT_SUPPORTED {rec['SR']}: libvirt cannot stream the data of "
                               f"{plugin.type} volumes", XenAPIError(E.SR_OPERATION_NOT_SUPPORTED, rec["SR"]))
        transfer.host, transfer.pool, name = storage.volume_of(vdi)
        transfer.test = parts.hosts.facts(transfer.host).hypervisor == "TEST"
        transfer.volume = transfer.state(name)
    except XenAPIError as e:
        raise Refusal.of(e) from None
    transfer.kind = _VOLUME_KINDS.get(transfer.volume.format, "")
    if not transfer.kind:
        raise Refusal(501, f"the VDI's volume is {transfer.volume.format}: only raw and qcow2 volumes are transferred")


def _authenticate(parts: TransferParts, query, cookies, request: Request, identity: Identity) -> Context:
    session = _param(query, cookies, "session_id")
    credentials = _basic_credentials(request.headers.get("authorization", ""))
    try:
        if session:
            return parts.make_context(*parts.sessions.caller(session, identity), identity)
        if credentials:
            user = parts.sessions.authenticate(*credentials, identity)
            return parts.make_context(None, user.name, role_permissions(parts.registry, user.role), identity)
    except XenAPIError as e:
        raise Refusal.of(e) from None
    raise Refusal(401, "SESSION_INVALID: a session_id parameter (or HTTP basic auth) is required",
                  XenAPIError(E.SESSION_INVALID, ""))


# ------------------------------------------------------------------ the VDI's operation mark ---

def _mark(transfer: Transfer) -> None:
    """Check that nothing else uses the VDI and show the transfer in its current_operations, in one
    step (the operation tables' lock).  An import needs the VDI to itself: no VBD attached and no
    other operation, not even a copy reading it; an export only no RW attachment and nothing that
    writes it."""
    store, table, vdi = transfer.store, transfer.parts.storage.tables["VDI"], transfer.vdi
    transfer.marker = transfer.task or f"OpaqueRef:{_uuid.uuid4()}"
    with guard():
        rec = store.get("VDI", vdi)
        vbds = [store.get("VBD", v) for v in rec["VBDs"] if store.exists("VBD", v)]
        attached = [v for v in vbds if v["currently_attached"]]
        if transfer.action == "import":
            running = next(iter(rec["current_operations"].items()), None)
            error = (XenAPIError(E.OTHER_OPERATION_IN_PROGRESS, "VDI", vdi, running[1], running[0]) if running else
                     XenAPIError(E.VDI_IN_USE, vdi, "import") if attached else None)
            shown = "blocked"
        else:
            error = (table.busy(vdi, rec) or
                     (XenAPIError(E.VDI_IN_USE, vdi, "export") if any(v["mode"] == "RW" for v in attached) else None))
            shown = "copy"
        if error is not None:
            raise Refusal.of(error)
        ops = {**rec["current_operations"], transfer.marker: shown}
        store.update("VDI", vdi, {"current_operations": ops,
                                  "allowed_operations": table.allowed(store, vdi, {**rec, "current_operations": ops})})


def _unmark(transfer: Transfer) -> None:
    store, table, vdi = transfer.store, transfer.parts.storage.tables["VDI"], transfer.vdi
    with guard():
        rec = store.find("VDI", vdi)
        if rec is not None and transfer.marker in rec["current_operations"]:
            ops = {k: v for k, v in rec["current_operations"].items() if k != transfer.marker}
            store.update("VDI", vdi, {"current_operations": ops,
                                      "allowed_operations": table.allowed(store, vdi, {**rec, "current_operations": ops})})


# ------------------------------------------------------------------ import ---

def import_raw_vdi(parts: TransferParts, request: Request, body: Body, identity: Identity) -> Response:
    started = time.monotonic()
    transfer = None
    try:
        transfer = _begin(parts, request, identity, "import")
        _locate(transfer)
        if transfer.fmt == "raw" and body.length is not None and body.length > transfer.volume.capacity:
            raise Refusal.of(XenAPIError(E.VDI_TOO_SMALL, transfer.vdi, str(body.length)))
        _mark(transfer)
    except Refusal as refusal:
        if transfer is not None:
            transfer.finish(refusal.failure())
        _log_refusal("import", request, identity, refusal)
        return refusal.response()
    error: XenAPIError | None = None
    try:
        transfer.ctx.allow_cancel(True)
        _import(transfer, body)
    except Refusal as refusal:
        error = refusal.failure()
        return _failed(transfer, refusal, body)
    except XenAPIError as e:
        error = e
        return _failed(transfer, Refusal.of(e), body)
    except BodyError as e:       # the client went away, broke HTTP or stalled: nobody may read an answer
        error = XenAPIError(E.INTERNAL_ERROR, f"upload ended before the body's end: {e}")
        _failed(transfer, Refusal(400, str(e), error), body)
        raise
    except BaseException as e:
        error = XenAPIError(E.INTERNAL_ERROR, f"import failed: {type(e).__name__}")
        _failed(transfer, Refusal(500, "internal server error", error), body)
        raise
    finally:
        transfer.ctx.allow_cancel(False)
        transfer.cleanup()
        _unmark(transfer)
        transfer.finish(error, transfer.vdi)
        _audit(transfer, identity, error)
        log.info("event=vdi-import user=%s via=%s addr=%s vdi=%s format=%s volume=%s bytes=%d ms=%.0f result=%s",
                 transfer.ctx.user, identity.via, identity.address or "-", transfer.uuid, transfer.fmt, transfer.kind,
                 transfer.bytes, (time.monotonic() - started) * 1000, error.code if error else "ok")
    headers = [("Task-Id", transfer.task)] if transfer.task else []
    return Response(200, "text/plain", b"", headers)


def _failed(transfer: Transfer, refusal: Refusal, body: Body) -> Response:
    """Mark an in-place import that failed after changing the VDI; the error's answer."""
    if transfer.touched:
        reason = refusal.text if body.failed is None else f"the upload ended early: {body.failed}"
        note = f"{DateTime.now()}: {reason[:200]} (after {transfer.bytes} bytes; the disk holds part of the upload)"
        try:
            transfer.store.modify("VDI", transfer.vdi,
                                  lambda rec: {"other_config": {**rec["other_config"], FAILED_KEY: note}})
        except XenAPIError:
            pass                                        # the VDI went meanwhile
    return refusal.response()


def _import(transfer: Transfer, body: Body) -> None:
    vol = transfer.volume
    transfer.total = body.length or vol.capacity
    transfer.progress(0.0, force=True)
    first = b""
    if transfer.fmt == "qcow2":
        first = _qcow2_head(transfer, body)
        limit = 2 * vol.capacity + (64 << 20)           # metadata and internal snapshots, within reason
    else:
        limit = vol.capacity
    if transfer.fmt == transfer.kind:                   # in place
        with transfer.writer(vol.name) as write:
            _pump(transfer, body, _touching(transfer, write), first, limit)
        if transfer.kind == "qcow2":
            _settle_qcow2(transfer)
    else:                                               # into a temporary volume, then converted into place
        transfer.share = 0.9
        staged = transfer.temporary(transfer.fmt)
        with transfer.writer(staged) as write:
            _pump(transfer, body, write, first, limit)
        if transfer.fmt == "qcow2":                     # the image's own size: grow it to the VDI's
            transfer.refresh_pool()
            if not transfer.test and transfer.state(staged).capacity < vol.capacity:
                transfer.conn.resize_volume(transfer.pool, staged, vol.capacity)
        transfer.progress(0.9, force=True)
        _convert_into_place(transfer, staged)
    transfer.refresh_pool()
    transfer._observe(vol.name)

    def unmark(rec: dict) -> dict:                      # a failed import's note goes with a success
        config = rec["other_config"]
        return {"other_config": {k: v for k, v in config.items() if k != FAILED_KEY}} if FAILED_KEY in config else {}
    try:
        transfer.store.modify("VDI", transfer.vdi, unmark)
    except XenAPIError:
        pass


def _pump(transfer: Transfer, body: Body, write: Callable[[bytes], None], first: bytes, limit: int) -> None:
    """The body into ``write``, in pieces of about a libvirt stream packet, at most ``limit`` bytes."""
    pending = bytearray(first)
    transfer.bytes = len(first)
    while True:
        data = body.read(STREAM_CHUNK)
        if data:
            transfer.bytes += len(data)
            if transfer.bytes > limit:
                raise Refusal.of(XenAPIError(E.VDI_TOO_SMALL, transfer.vdi, f"more than {limit} bytes"))
            pending += data
        if len(pending) >= STREAM_CHUNK or (pending and not data):
            write(bytes(pending))
            pending.clear()
        if not data:
            return
        transfer.progress()


def _touching(transfer: Transfer, write: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """``write`` into the VDI's own volume, noting that it has been changed."""
    def touch(data: bytes) -> None:
        transfer.touched = True
        write(data)
    return touch


def _qcow2_head(transfer: Transfer, body: Body) -> bytes:
    """The first bytes of a qcow2 body, once its header says it may be written into this VDI."""
    head = b""
    while len(head) < _QCOW2_HEAD and (data := body.read(_QCOW2_HEAD - len(head))):
        head += data
    if len(head) < 72 or head[:4] != b"QFI\xfb":
        raise Refusal(400, "the body is not a qcow2 image (format=qcow2)")
    version, backing_offset, _, _, size, crypt = struct.unpack(">IQIIQI", head[4:36])
    if version not in (2, 3):
        raise Refusal(400, f"qcow2 version {version} is not supported")
    if backing_offset:
        raise Refusal(400, "the qcow2 image has a backing file: flatten it first (qemu-img convert -O qcow2)")
    if crypt:
        raise Refusal(400, "the qcow2 image is encrypted")
    if version == 3 and len(head) >= 80:
        incompatible = struct.unpack(">Q", head[72:80])[0]
        if incompatible & 0b10:
            raise Refusal(400, "the qcow2 image is marked corrupt")
        if incompatible & 0b100:
            raise Refusal(400, "the qcow2 image keeps its data in an external file")
    if size > transfer.volume.capacity:
        raise Refusal.of(XenAPIError(E.VDI_TOO_SMALL, transfer.vdi, str(size)))
    return head


def _settle_qcow2(transfer: Transfer) -> None:
    """After a qcow2 written in place: drop what is left of the old file past the new image (a
    local file; elsewhere those bytes are free clusters, harmless), let libvirt re-read the file,
    and give the VDI its size back if the image was smaller."""
    vol = transfer.volume
    if transfer.local_files(vol.name) and os.path.getsize(vol.path) > transfer.bytes:
        os.truncate(vol.path, transfer.bytes)
    transfer.refresh_pool()
    if not transfer.test and transfer.state(vol.name).capacity < vol.capacity:
        transfer.conn.resize_volume(transfer.pool, vol.name, vol.capacity)


def _convert_into_place(transfer: Transfer, staged: str) -> None:
    vol = transfer.volume
    if transfer.local_files(staged, vol.name):
        transfer.touched = True
        _qemu_img_convert(transfer, transfer.state(staged).path, transfer.fmt, vol.path, transfer.kind)
        return
    converted = transfer.temporary(transfer.kind, copy_of=staged)    # libvirt converts (qemu-img, on the host)
    transfer.discard(staged)
    transfer.progress(0.95, force=True)
    with transfer.reader(converted) as chunks, transfer.writer(vol.name) as write:
        write = _touching(transfer, write)
        for data in chunks:
            write(data)
    transfer.discard(converted)


def _qemu_img_convert(transfer: Transfer, src: str, src_fmt: str, dst: str, dst_fmt: str) -> None:
    """qemu-img convert into the existing file (-n: its inode, owner and labels stay libvirt's)."""
    command = ["qemu-img", "convert", "-p", "-n", "-f", src_fmt, "-O", dst_fmt, src, dst]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(process.stderr.read()), daemon=True)
    reader.start()
    try:
        tail = b""
        while chunk := process.stdout.read1(4096):
            tail = (tail + chunk)[-256:]
            if found := _QEMU_PROGRESS.findall(tail):
                transfer.progress(0.9 + 0.1 * float(found[-1]) / 100)
        if process.wait() != 0:
            reader.join(5)
            raise XenAPIError(E.VDI_COPY_FAILED, b"".join(errors).decode(errors="replace").strip()[:500]
                              or f"qemu-img exited with {process.returncode}")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def _audit(transfer: Transfer, identity: Identity, error: XenAPIError | None) -> None:
    transfer.parts.audit.record(user=transfer.ctx.user, via=identity.via, address=identity.address,
                                method=IMPORT_PERMISSION, objects=[f"VDI/{transfer.vdi}"], uuids=[transfer.uuid],
                                outcome=error.code if error else "ok", task=transfer.task or "")


def _log_refusal(action: str, request: Request, identity: Identity, refusal: Refusal) -> None:
    log.info("event=vdi-%s-refused via=%s addr=%s status=%d reason=%s", action, identity.via,
             identity.address or "-", refusal.status, refusal.text[:200])


# ------------------------------------------------------------------ export ---

def export_raw_vdi(parts: TransferParts, request: Request, identity: Identity) -> Response:
    transfer = None
    try:
        transfer = _begin(parts, request, identity, "export")
        _locate(transfer)
        if request.method == "HEAD":                # what a GET would answer, without doing it
            length = transfer.volume.capacity if transfer.fmt == "raw" else None
            return Response(200, "application/octet-stream", b"", stream=(), length=length)
        _mark(transfer)
    except Refusal as refusal:
        if transfer is not None and request.method != "HEAD":
            transfer.finish(refusal.failure())
        _log_refusal("export", request, identity, refusal)
        return refusal.response()
    vol = transfer.volume
    try:
        transfer.progress(0.0, force=True)
        if transfer.fmt == transfer.kind and not (transfer.kind == "qcow2" and vol.backing):
            source = vol.name
        else:                                       # converted (or a qcow2 overlay flattened) by libvirt
            source = transfer.temporary(transfer.fmt, copy_of=vol.name)
        length = transfer.state(source).capacity if transfer.fmt == "raw" else None
    except BaseException as e:
        error = e if isinstance(e, XenAPIError) else XenAPIError(E.INTERNAL_ERROR, f"export failed: {type(e).__name__}")
        transfer.cleanup()
        _unmark(transfer)
        transfer.finish(error)
        if not isinstance(e, XenAPIError):
            raise
        refusal = Refusal.of(e)
        _log_refusal("export", request, identity, refusal)
        return refusal.response()
    transfer.total = length or vol.capacity
    headers = [("Task-Id", transfer.task)] if transfer.task else []
    return Response(200, "application/octet-stream", b"", headers,
                    stream=_Download(transfer, source, identity), length=length)


class _Download:
    """An export's body: the source volume's chunks; ``close()`` (the transport calls it however
    the sending ends) deletes the temporary volume, clears the VDI's mark and ends the task."""

    def __init__(self, transfer: Transfer, source: str, identity: Identity):
        self.transfer, self.source, self.identity = transfer, source, identity
        self.started = time.monotonic()
        self.complete = False
        self.error: XenAPIError | None = None
        self._chunks: Iterator[bytes] | None = None
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        self._chunks = self._read()
        return self._chunks

    def _read(self) -> Iterator[bytes]:
        transfer = self.transfer
        try:
            with transfer.reader(self.source) as chunks:
                for data in chunks:
                    transfer.bytes += len(data)
                    yield data
                    transfer.progress()
            self.complete = True
        except XenAPIError as e:
            self.error = e
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        transfer = self.transfer
        if self._chunks is not None:
            self._chunks.close()
        transfer.cleanup()
        _unmark(transfer)
        error = None if self.complete else self.error or XenAPIError(
            E.INTERNAL_ERROR, f"the export ended after {transfer.bytes} bytes (the client went away)")
        transfer.finish(error)
        log.info("event=vdi-export user=%s via=%s addr=%s vdi=%s format=%s volume=%s bytes=%d ms=%.0f result=%s",
                 transfer.ctx.user, self.identity.via, self.identity.address or "-", transfer.uuid, transfer.fmt,
                 transfer.kind, transfer.bytes, (time.monotonic() - self.started) * 1000,
                 error.code if error else "ok")
