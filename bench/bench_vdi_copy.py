"""VDI.copy of a 1 GiB qcow2 volume with half of it written, through the API as a task
(``Async.VDI.copy``, then the task followed with ``event.from`` until it leaves ``pending``),
against ``qemu-img convert -O qcow2`` of the same file into another file in the same directory.

    .venv/bin/python bench/bench_vdi_copy.py [--rounds 11] [--size-mib 1024] [--written-mib 512] [--local-sr]

Runs on a real libvirtd (qemu:///system; started with scripts/libvirtd.sh start if it does not
answer, as the end-to-end tests do), in a dir SR: the same-host copy of a file is
``qemu-img convert -p -n -C`` into the volume libvirt made, driven by the server
(xenapi/services/volume_copy.py; ``-C``, copy_file_range, is what makes up for the volume's
creation through libvirt, 25-40 ms of the API's extra time).  The SR is one
made for the run (SR.create, type dir, in the benchmark's directory; SR.destroy at the end):
the host's "Local storage" SR is the libvirt pool ``xenapi-local``, which every server on this
libvirtd shares (the end-to-end tests' too), so it is used only with ``--local-sr``.  The source
is made through the API (VDI.create), filled with qemu-io (non-zero data, so no copy can skip
it), then re-read (SR.scan, and VDI.update where the SR has it).  Dirty pages are written back
(sync) before every timed copy, so neither side pays for the other's writes; one untimed copy
each comes first (a run's first copy is slow on either side).  Every VDI made is
destroyed; the pool ``xenapi-local`` is removed again if this run's server defined it.
Also printed: VDI.create + VDI.destroy of an empty volume of the same size (the libvirt volume
the copy goes into is made the same way), the part of the copy that is not qemu-img.
Target: ratio (xenapi time / qemu-img time) at most 1.1.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from common import PASSWORD, ROOT, XenapiServer, compare

import libvirt
import XenAPI

URI = "qemu:///system"
LOCAL_POOL = "xenapi-local"               # xenapi/services/storage.py: the local SR's libvirt pool
MiB = 1 << 20


def ensure_libvirtd() -> None:
    """qemu:///system answers, started as tests/e2e/conftest.py does if it does not."""
    def answers() -> bool:
        return subprocess.run(["virsh", "-q", "-c", URI, "uri"], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=20).returncode == 0
    if not answers():
        subprocess.run(["bash", str(ROOT / "scripts/libvirtd.sh"), "start"], stdin=subprocess.DEVNULL,
                       timeout=180, check=False)
        if not answers():
            raise SystemExit(f"{URI} does not answer, and scripts/libvirtd.sh start did not help")


def pool_names(conn: libvirt.virConnect) -> set[str]:
    return {p.name() for p in conn.listAllStoragePools(0)}


def remove_local_pool_if_ours(conn: libvirt.virConnect, ours: Path) -> None:
    """The pool ``xenapi-local`` if this run's server defined it (over its own state directory) and
    it holds no volume: shared with every other server on this libvirtd, it is left otherwise."""
    try:
        pool = conn.storagePoolLookupByName(LOCAL_POOL)
        path = ET.fromstring(pool.XMLDesc(0)).findtext("target/path") or ""
        if not Path(path).is_relative_to(ours) or (pool.isActive() and pool.numOfVolumes() > 0):
            print(f"note: pool {LOCAL_POOL} ({path}) left in place")
            return
        if pool.isActive():
            pool.destroy()
        pool.undefine()
    except libvirt.libvirtError as e:
        print(f"warning: pool {LOCAL_POOL}: {e}", file=sys.stderr)


def wait_task(x, task: str, timeout: float = 600.0) -> tuple[dict, int]:
    """Follow the task with event.from (no polling delay) until it is no longer pending: one
    status read after the token is taken, then events only.  (Its record, the task's events seen.)"""
    token = x.event_from(["task"], "", 0.0)["token"]
    deadline = time.monotonic() + timeout
    done = x.task.get_status(task) != "pending"
    seen = 0
    while not done:
        if time.monotonic() > deadline:
            raise RuntimeError(f"task {task} still pending after {timeout} s")
        batch = x.event_from(["task"], token, 5.0)
        token = batch["token"]
        mine = [e for e in batch["events"] if e["ref"] == task]
        seen += len(mine)
        done = any(e["operation"] == "del" or e["snapshot"]["status"] != "pending" for e in mine)
    return x.task.get_record(task), seen


def result_ref(task_record: dict) -> str:
    result = task_record["result"]
    return result.removeprefix("<value>").removesuffix("</value>")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--written-mib", type=int, default=512)
    parser.add_argument("--local-sr", action="store_true",
                        help='copy in the host\'s "Local storage" SR (the shared pool xenapi-local)')
    args = parser.parse_args()
    for tool in ("qemu-img", "qemu-io", "virsh"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found")
    ensure_libvirtd()
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open(URI)
    pool_existed = LOCAL_POOL in pool_names(conn)

    server = XenapiServer(uris=(URI,))
    session = XenAPI.Session(server.url)
    session.xenapi.login_with_password("root", PASSWORD, "2.21", "bench")
    x = session.xenapi
    made: list[str] = []
    sr = None
    scratch = server.dir / "baseline"
    scratch.mkdir()
    try:
        if args.local_sr:
            sr = x.pool.get_default_SR(x.pool.get_all()[0])
        else:
            sr = x.SR.create(x.host.get_all()[0], {"location": str(server.dir / "sr")}, "0",
                             "bench-vdi-copy", "", "dir", "user", False, {})
        print(f"SR {x.SR.get_name_label(sr)!r} ({x.SR.get_type(sr)}), libvirt pool "
              f"{x.SR.get_sm_config(sr).get('libvirt_pool')}")
        source = x.VDI.create({"SR": sr, "virtual_size": str(args.size_mib * MiB), "type": "user",
                               "name_label": "bench-vdi-copy source", "name_description": "",
                               "sharable": False, "read_only": False, "other_config": {}})
        made.append(source)
        location = x.VDI.get_location(source)
        writes = [a for off in range(0, args.written_mib, 256)            # qemu-io's requests stay under 2 GiB
                  for a in ("-c", f"write -P 0xa5 {off}M {min(256, args.written_mib - off)}M")]
        subprocess.run(["qemu-io", "-f", "qcow2", *writes, location], check=True, stdout=subprocess.DEVNULL)
        x.SR.scan(sr)
        try:
            x.VDI.update(source)
        except XenAPI.Failure as e:            # a dir SR has no VDI_UPDATE; its SR.scan re-reads
            if e.details[0] != "SR_OPERATION_NOT_SUPPORTED":
                raise
        used = int(x.VDI.get_physical_utilisation(source))
        print(f"source {location}: virtual {int(x.VDI.get_virtual_size(source)) // MiB} MiB, "
              f"physical {used // MiB} MiB after SR.scan")
        if used < args.written_mib * MiB:
            raise RuntimeError("the server did not re-read the written volume's size")
        checked = []
        task_events: list[int] = []

        def ours() -> float:
            os.sync()
            start = time.perf_counter()
            task = x.Async.VDI.copy(source, sr)
            record, events = wait_task(x, task)
            elapsed = time.perf_counter() - start
            if record["status"] != "success":
                raise RuntimeError(f"VDI.copy: {record['status']} {record['error_info']}")
            task_events.append(events)
            copy = result_ref(record)
            made.append(copy)
            x.task.destroy(task)
            if not checked:                    # once, outside the timing: the copy has the data
                subprocess.run(["qemu-img", "compare", "-q", location, x.VDI.get_location(copy)], check=True)
                checked.append(copy)
            x.VDI.destroy(copy)
            made.remove(copy)
            return elapsed * 1000

        def baseline() -> float:
            target = scratch / "copy.qcow2"
            os.sync()
            start = time.perf_counter()
            subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", location, str(target)], check=True)
            elapsed = time.perf_counter() - start
            target.unlink()
            return elapsed * 1000

        def empty_volume() -> float:
            start = time.perf_counter()
            vdi = x.VDI.create({"SR": sr, "virtual_size": str(args.size_mib * MiB), "type": "user",
                                "name_label": "bench-vdi-copy empty", "name_description": "",
                                "sharable": False, "read_only": False, "other_config": {}})
            made.append(vdi)
            x.VDI.destroy(vdi)
            made.remove(vdi)
            return (time.perf_counter() - start) * 1000

        warm = ours(), baseline()              # the first copy of a run is slow on either side
        print(f"warm-up, not counted: xenapi {warm[0]:.1f} ms, baseline {warm[1]:.1f} ms")
        fixed = statistics.median(empty_volume() for _ in range(args.rounds))
        print(f"VDI.create + VDI.destroy of an empty {args.size_mib} MiB VDI: median {fixed:.1f} ms")
        compare(f"copy a {args.size_mib} MiB qcow2 VDI with {args.written_mib} MiB written", args.rounds,
                ours, baseline, "ms", higher_is_better=False, target=1.1)
        print(f"events of the task per copy (progress updates, mostly), each a store write on the server: "
              f"median {statistics.median(task_events):.0f}")
    finally:
        for vdi in made:
            try:
                x.VDI.destroy(vdi)
            except XenAPI.Failure as e:
                print(f"warning: VDI.destroy {vdi}: {e}", file=sys.stderr)
        own_pool = None
        if sr is not None and not args.local_sr:
            own_pool = x.SR.get_sm_config(sr).get("libvirt_pool")
            try:
                for pbd in x.SR.get_PBDs(sr):
                    x.PBD.unplug(pbd)
                x.SR.destroy(sr)
            except XenAPI.Failure as e:
                print(f"warning: SR.destroy: {e}", file=sys.stderr)
        session.xenapi.session.logout()
        server.stop()
        if own_pool and own_pool in pool_names(conn):          # SR.destroy failed: libvirt's pool still
            pool = conn.storagePoolLookupByName(own_pool)
            if pool.isActive():
                pool.destroy()
            pool.undefine()
        if not pool_existed and LOCAL_POOL in pool_names(conn):
            remove_local_pool_if_ours(conn, server.dir)
        conn.close()
        shutil.rmtree(server.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
