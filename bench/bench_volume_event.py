"""Latency from a volume made behind the server's back (libvirt-python's createXML on its own
connection to the same libvirtd) to the blocked ``event.from`` call that reports the VDI's add.
libvirt sends no volume events: the server finds the volume by polling each pool's volume names
every ``[storage] poll_interval`` seconds (0.5 by default; xenapi/observers/polling.py).

    .venv/bin/python bench/bench_volume_event.py [--trials 30]

A private libvirtd serves the test driver; the volumes go into its default-pool (the server's
"Local storage" SR).  Each trial starts at a random moment (0 to 1 s after the last), so the
creations fall anywhere in the poller's period; each volume is deleted again and its removal
waited for (reported too) before the next trial.
Target: median under 1 s.
"""
from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import threading
import time

from common import PASSWORD, XenapiServer

import libvirt
import XenAPI

from tests.private_libvirtd import PrivateLibvirtd

POOL = "default-pool"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(round(len(ordered) * q)) - 1)]


def wait_for(x, token: str, match, timeout: float = 30.0) -> tuple[float, str]:
    """Block in event.from until an event satisfies ``match``; (time seen, next token)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = x.event_from(["vdi"], token, 10.0)
        token = batch["token"]
        if any(match(e) for e in batch["events"]):
            return time.perf_counter(), token
    raise RuntimeError(f"no matching event within {timeout} s")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=30)
    args = parser.parse_args()
    daemon = PrivateLibvirtd()
    daemon.start()
    # held open to the end: the test driver's "default" state lives while a connection does
    conn = libvirt.open(daemon.uri)
    pool = conn.storagePoolLookupByName(POOL)
    server = XenapiServer(uris=(daemon.uri,))
    session = XenAPI.Session(server.url)
    session.xenapi.login_with_password("root", PASSWORD, "2.21", "bench")
    x = session.xenapi
    added, removed = [], []
    try:
        token = x.event_from(["vdi"], "", 0.0)["token"]
        for n in range(args.trials):
            name = f"bench-event-{n:03d}.img"
            started: dict[str, float] = {}

            def create(name=name, started=started):
                started["t"] = time.perf_counter()
                pool.createXML(f"<volume><name>{name}</name><capacity unit='bytes'>{1 << 30}</capacity>"
                               "<target><format type='raw'/></target></volume>", 0)
            timer = threading.Timer(random.uniform(0.0, 1.0), create)
            timer.start()
            seen, token = wait_for(x, token, lambda e, name=name: e["operation"] == "add"
                                   and e["snapshot"]["sm_config"].get("volume") == name)
            timer.join()
            added.append((seen - started["t"]) * 1000)
            gone_from = time.perf_counter()
            pool.storageVolLookupByName(name).delete(0)
            seen, token = wait_for(x, token, lambda e: e["operation"] == "del")
            removed.append((seen - gone_from) * 1000)
    finally:
        session.xenapi.session.logout()
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
        conn.close()
        daemon.remove()
    median = statistics.median(added)
    print(f"volume made -> VDI add in event.from, {len(added)} trials: median {median:.0f} ms, "
          f"p90 {percentile(added, 0.9):.0f} ms, min {min(added):.0f} ms, max {max(added):.0f} ms")
    print(f"volume deleted (just after a poll saw the add) -> VDI del in event.from: median {statistics.median(removed):.0f} ms, "
          f"p90 {percentile(removed, 0.9):.0f} ms")
    print(f"  trials (add, ms): {', '.join(f'{v:.0f}' for v in added)}")
    print(f"target median < 1000 ms: {'met' if median < 1000 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
