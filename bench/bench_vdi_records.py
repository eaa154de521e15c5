"""VDI.get_all_records for 10,000 VDIs over JSON-RPC, against libvirt-python listing the same
volumes through the same libvirtd (the pool's listAllVolumes(), then info() and XMLDesc() of each).

    .venv/bin/python bench/bench_vdi_records.py [--volumes 10000] [--rounds 5]

A private libvirtd serves the test driver (test+unix:///default?socket=...); the volumes are made
in its default-pool with libvirt-python (on a connection held open to the end: the test
driver's shared "default" state is dropped with its last connection) before ``xenapi serve --libvirt <that uri>`` is launched.
Also reported: the time from launching the server until ``VDI.get_all`` counts every volume, and
the first VDI.get_all_records after that (before the server has cached any record's encoding).
Target: ratio (xenapi time / libvirt time) at most 1.0.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time

from common import PASSWORD, XenapiServer, compare, jsonrpc

import libvirt

from tests.private_libvirtd import PrivateLibvirtd

POOL = "default-pool"                     # the test driver's own pool: the "Local storage" SR
GiB = 1 << 30


def make_volumes(conn: libvirt.virConnect, count: int) -> int:
    """``count`` volumes in the pool; returns how many it holds now."""
    pool = conn.storagePoolLookupByName(POOL)
    start = time.perf_counter()
    for n in range(count):
        pool.createXML(f"<volume><name>bench-{n:05d}.img</name><capacity unit='bytes'>{GiB}</capacity>"
                       "<allocation unit='bytes'>0</allocation><target><format type='raw'/></target></volume>", 0)
    print(f"made {count} volumes in {POOL} in {time.perf_counter() - start:.1f} s")
    return pool.numOfVolumes()


def launch_and_wait(uri: str, volumes: int) -> tuple[XenapiServer, str, float, float]:
    """Launch the server; time its first answer and the moment VDI.get_all counts every volume.
    Polled every 0.1 s (VDI.get_all alone: the refs, not the records)."""
    launched = time.perf_counter()
    server = XenapiServer(uris=(uri,), wait=False)
    session = first = None
    deadline = launched + 600
    while time.perf_counter() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited; see {server.dir / 'server.log'}")
        if session is None:
            try:
                session = jsonrpc(server.url, "session.login_with_password", "root", PASSWORD, "2.21", "bench")
                first = time.perf_counter() - launched
            except (OSError, RuntimeError):
                session = None
                time.sleep(0.01)
            continue
        if len(jsonrpc(server.url, "VDI.get_all", session)) >= volumes:
            return server, session, first, time.perf_counter() - launched
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"the server did not list {volumes} VDIs within 600 s")


def time_xenapi(url: str, session: str, volumes: int) -> float:
    start = time.perf_counter()
    records = jsonrpc(url, "VDI.get_all_records", session, timeout=120)
    elapsed = time.perf_counter() - start
    assert len(records) >= volumes, len(records)
    return elapsed * 1000


def time_libvirt(uri: str, volumes: int) -> float:
    conn = libvirt.open(uri)
    start = time.perf_counter()
    listed = conn.storagePoolLookupByName(POOL).listAllVolumes(0)
    for vol in listed:
        vol.info()
        vol.XMLDesc(0)
    elapsed = time.perf_counter() - start
    conn.close()
    assert len(listed) >= volumes, len(listed)
    return elapsed * 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--volumes", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    daemon = PrivateLibvirtd()
    daemon.start()
    server = None
    # held open to the end: the test driver's "default" state lives while a connection does
    keeper = libvirt.open(daemon.uri)
    try:
        volumes = make_volumes(keeper, args.volumes)
        server, session, first, listed = launch_and_wait(daemon.uri, volumes)
        print(f"server launch -> first answer {first:.2f} s, -> all {volumes} VDIs listed {listed:.2f} s")
        print(f"first VDI.get_all_records once listed (nothing cached yet): "
              f"{time_xenapi(server.url, session, volumes):.1f} ms")
        compare(f"get_all_records of {volumes} VDIs", args.rounds,
                lambda: time_xenapi(server.url, session, volumes),
                lambda: time_libvirt(daemon.uri, volumes), "ms", higher_is_better=False, target=1.0)
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(server.dir, ignore_errors=True)
        keeper.close()
        daemon.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
