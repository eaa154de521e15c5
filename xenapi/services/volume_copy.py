"""VDI.copy: a volume's data into a new VDI (or an existing one), as a task with progress and cancel.

Where both volumes are files on this machine (a local libvirtd's dir, iso or nfs SR), the copy is
``qemu-img convert -p -C`` into the destination volume libvirt made: the same program as doing it
by hand, with its progress read from its output and a cancel that stops it.  Within
another host (remote, block or network volumes, the test driver) libvirt copies (``createXMLFrom``,
which cannot be interrupted: a cancel takes effect when it returns).  Onto another host, the
bytes go through libvirt's volume streams (``_stream_copy``).  Whatever
fails or is cancelled, the destination volume made here is deleted: no orphan is left behind.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import threading
from urllib.parse import urlparse

from xenapi import errors as E
from xenapi.errors import XenAPIError
from xenapi.model.types import NULL_REF
from xenapi.observers.volumes import volume_key
from xenapi.state.store import delete, new_uuid

log = logging.getLogger(__name__)

_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
# task progress moves in steps of this many percent: each step is a store write and an event to
# every watcher, and qemu-img reports each percent (measured: 80 steps cost 0.15 of the copy's time)
PROGRESS_STEP = 5.0


def copy(storage, ctx, vdi: str, rec: dict, sr: str, into_vdi: str) -> str:
    store = storage.store
    src_host, src_pool, src_name = storage.volume_of(vdi)
    if into_vdi != NULL_REF:
        dst = store.get("VDI", into_vdi)
        if dst["read_only"]:
            raise XenAPIError(E.VDI_READONLY, into_vdi)
        if dst["virtual_size"] < rec["virtual_size"]:
            raise XenAPIError(E.VDI_TOO_SMALL, into_vdi, str(rec["virtual_size"]))
        target, made = into_vdi, False
    else:
        if sr == NULL_REF or not sr:
            sr = rec["SR"]
        storage._need(sr, "VDI_CREATE")
        storage.check_space(sr, rec["virtual_size"])
        host = storage.attached_host(sr)
        ctx.progress(0.0)
        if host != src_host:
            return _stream_copy(storage, ctx, rec, (src_host, src_pool, src_name), host, sr)
        if not _local_files(storage, host, rec, sr):
            return _libvirt_copy(storage, ctx, vdi, rec, sr, host, src_name)
        target = storage.volume_like(host, sr, rec)
        made = True
    try:
        _qemu_img_copy(storage, ctx, rec, target)
        _refresh(storage, target)
    except BaseException:
        if made:
            _discard(storage, target)
        raise
    return target


def _local_files(storage, host: str, rec: dict, sr: str) -> bool:
    """Both volumes are files this process can reach: a local (not remote, not test) libvirtd."""
    uri = storage.hosts.uri_of(host)
    if urlparse(uri).hostname or storage.hosts.facts(host).hypervisor == "TEST":
        return False
    return os.path.isfile(rec["location"]) and shutil.which("qemu-img") is not None


def _libvirt_copy(storage, ctx, vdi: str, rec: dict, sr: str, host: str, src_name: str) -> str:
    """libvirt's own copy within one host (createXMLFrom), on a thread so a cancel can be noted."""
    result: dict = {}
    copy_of = (storage.store.get("SR", rec["SR"])["uuid"], src_name)
    if sr != rec["SR"] and storage.hosts.facts(host).hypervisor == "TEST":
        # libvirt's test driver looks the source up in the destination pool (its createXMLFrom
        # fails across pools) and keeps no data: there the copy is a new volume of the same size
        copy_of = None

    def run():
        try:
            result["ref"] = storage.volume_like(host, sr, rec, copy_of=copy_of)
        except BaseException as e:           # handed to the caller's thread
            result["error"] = e
    worker = threading.Thread(target=run, name="vdi-copy", daemon=True)
    ctx.allow_cancel(True)
    try:
        worker.start()
        cancelled = None
        while worker.is_alive():
            worker.join(0.2)
            try:
                ctx.check_cancelled()
            except XenAPIError as e:
                cancelled = e                # libvirt cannot be interrupted: discard what it makes
    finally:
        ctx.allow_cancel(False)
    if "error" in result:
        raise result["error"]
    if cancelled is not None:
        _discard(storage, result["ref"])
        raise cancelled
    ctx.progress(1.0)
    return result["ref"]


def _stream_copy(storage, ctx, rec: dict, source: tuple[str, str, str], host: str, sr: str) -> str:
    """A copy onto another host: the source volume's bytes through libvirt streams, downloaded
    from its host and uploaded into the new volume (both hosts may be remote).  A source with a
    backing file, or in another format than the destination's, is first flattened into a
    temporary volume on its own host by libvirt, which is deleted afterwards whatever happens."""
    src_host, src_pool, src_name = source
    src = storage.hosts.connection(src_host)
    fmt = storage.plugin(sr).disk_format
    temporary = None
    if rec["sm_config"].get("backing") or _fmt(rec) != fmt:
        temporary = f"xenapi-copy-{new_uuid()}.{fmt}"
        src.copy_volume(src_pool, src_name, src_pool,
                        f"<volume><name>{temporary}</name><capacity unit='bytes'>{rec['virtual_size']}</capacity>"
                        f"<target><format type='{fmt}'/></target></volume>")
    try:
        total = max(1, src.volume_state(src_pool, temporary or src_name).allocation)
        target = storage.volume_like(host, sr, rec)
        try:
            _, dst_pool, dst_name = storage.volume_of(target)
            ctx.allow_cancel(True)
            with src.download_volume(src_pool, temporary or src_name) as chunks, \
                    storage.hosts.connection(host).upload_volume(dst_pool, dst_name) as write:
                sent, reported = 0, 0.0
                for chunk in chunks:
                    write(chunk)
                    sent += len(chunk)
                    if (percent := min(99.0, 100.0 * sent / total)) >= reported + PROGRESS_STEP:
                        reported = percent
                        ctx.progress(percent / 100)
                    ctx.check_cancelled()
            _refresh(storage, target)
        except BaseException:
            _discard(storage, target)
            raise
        finally:
            ctx.allow_cancel(False)
    finally:
        if temporary is not None:
            try:
                src.delete_volume(src_pool, temporary)
            except XenAPIError as e:
                log.warning("event=copy-temporary-left host=%s volume=%s error=%s", src_host, temporary, e.code)
    ctx.progress(1.0)
    return target


def _qemu_img_copy(storage, ctx, rec: dict, target: str) -> None:
    """``qemu-img convert`` into the existing volume (``-n``), with ``-C``: the data clusters are
    copied with copy_file_range, inside the kernel (one copy, page cache to page cache, instead of
    a read into qemu-img's buffer and a write back out): a quarter less CPU than without it, on a
    1 GiB qcow2 with half of it written (bench/bench_vdi_copy.py), which pays for libvirt making
    the volume first.  The output is the same; where the file systems cannot (another kind of
    file system, an old kernel, a compressed cluster), qemu-img falls back to reading and writing
    by itself.  Measured and not kept: ``-W`` and ``-m 2/16`` (no gain, more CPU with ``-W``),
    ``--target-is-zero`` (no gain: a fresh volume's zeroing pass is one block-status query),
    ``-t none``/``-T none`` (twice as slow: the source is in the page cache, and the default
    target cache, unsafe, never flushes), ``-t writeback`` (1.7 times as slow)."""
    dst = storage.store.get("VDI", target)
    src_fmt = _fmt(rec)
    command = ["qemu-img", "convert", "-p", "-n", "-C", "-f", src_fmt, "-O", _fmt(dst),
               rec["location"], dst["location"]]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stderr: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr.append(process.stderr.read()), daemon=True)
    reader.start()
    ctx.allow_cancel(True)
    try:
        buffer, reported = b"", 0.0
        while chunk := process.stdout.read1(4096) if hasattr(process.stdout, "read1") else process.stdout.read(64):
            buffer = (buffer + chunk)[-256:]
            found = _PROGRESS.findall(buffer)
            if found and float(found[-1]) >= reported + PROGRESS_STEP:
                reported = float(found[-1])
                ctx.progress(min(0.99, reported / 100))
            try:
                ctx.check_cancelled()
            except XenAPIError:
                process.kill()
                raise
        if process.wait() != 0:
            reader.join(5)
            raise XenAPIError(E.VDI_COPY_FAILED, (b"".join(stderr).decode(errors="replace").strip()
                                                  or f"qemu-img exited with {process.returncode}"))
    finally:
        ctx.allow_cancel(False)
        if process.poll() is None:
            process.kill()
        process.wait()
    ctx.progress(1.0)


def _fmt(rec: dict) -> str:
    fmt = rec["sm_config"].get("format", "raw")
    return fmt if fmt in ("qcow2", "raw") else "raw"


def _refresh(storage, vdi: str) -> None:
    host, pool, name = storage.volume_of(vdi)
    storage.reconciler.refresh(host, volume_key(pool, name), "volume")


def _discard(storage, vdi: str) -> None:
    """Delete the volume a failed copy made.  With its libvirtd gone (it died mid-copy), a file
    on this machine is removed directly, so no orphan waits for the daemon's return."""
    location = storage.store.get("VDI", vdi)["location"] if storage.store.exists("VDI", vdi) else ""
    try:
        host, pool, name = storage.volume_of(vdi)
        storage.hosts.connection(host).delete_volume(pool, name)
        storage.reconciler.refresh(host, volume_key(pool, name), "volume")
    except XenAPIError as e:
        if e.code in (E.HOST_NOT_LIVE, E.HOST_OFFLINE, E.SR_HAS_NO_PBDS) and os.path.isfile(location):
            os.unlink(location)
            storage.store.apply([delete("VDI", vdi)])
            log.warning("event=copy-cleanup-direct vdi=%s path=%s reason=%s", vdi, location, e.code)
        else:
            log.warning("event=copy-cleanup-failed vdi=%s error=%s", vdi, e.code)
