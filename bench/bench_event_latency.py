"""Latency from a power change made outside the API (libvirt-python on its own connection to the
same libvirtd) to the blocked event.from call that reports it, through the official XenAPI client.
The server runs in its own process on a private libvirtd serving the test driver.

    .venv/bin/python bench/bench_event_latency.py [--changes 50]
Target: median under 20 ms.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from common import PASSWORD, ROOT, free_port, wait_for_port

import libvirt
import XenAPI

from tests.private_libvirtd import PrivateLibvirtd


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=50)
    args = parser.parse_args()
    daemon = PrivateLibvirtd()
    daemon.start()
    state = tempfile.mkdtemp(prefix="xenapi-bench-")
    port = free_port()
    server = subprocess.Popen([str(ROOT / ".venv/bin/xenapi"), "serve", "--listen", f"127.0.0.1:{port}",
                               "--state", state, "--libvirt", daemon.uri],
                              env={**os.environ, "XENAPI_ADMIN_PASSWORD": PASSWORD},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, 60)
        conn = libvirt.open(daemon.uri)
        dom = conn.lookupByName("test")          # the test driver's running domain
        session = XenAPI.Session(f"http://127.0.0.1:{port}")
        session.xenapi.login_with_password("root", PASSWORD, "2.21", "bench")
        vm = session.xenapi.VM.get_by_uuid(dom.UUIDString())
        token = session.xenapi.event_from(["vm"], "", 0.0)["token"]
        latencies = []
        for n in range(args.changes):
            want = "Paused" if n % 2 == 0 else "Running"
            started = {}
            threading.Timer(0.02, lambda: (started.setdefault("t", time.perf_counter()),
                                           dom.suspend() if want == "Paused" else dom.resume())).start()
            while True:
                batch = session.xenapi.event_from(["vm"], token, 10.0)
                token = batch["token"]
                if any(e["ref"] == vm and e["snapshot"]["power_state"] == want for e in batch["events"]):
                    latencies.append((time.perf_counter() - started["t"]) * 1000)
                    break
        latencies.sort()
        median = statistics.median(latencies)
        print(f"event latency over {len(latencies)} changes: median {median:.1f} ms, "
              f"p90 {latencies[int(len(latencies) * 0.9) - 1]:.1f} ms, max {latencies[-1]:.1f} ms")
        print(f"target median < 20 ms: {'met' if median < 20 else 'NOT met'}")
    finally:
        server.terminate()
        server.wait(timeout=30)
        daemon.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
