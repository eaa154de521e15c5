"""Start-up and listing at scale: ten libvirt test-driver hosts of 1,000 guests each.

    .venv/bin/python bench/bench_scale.py [--hosts 10] [--vms 1000] [--rounds 5]

Measured from the moment ``xenapi serve`` is launched (a subprocess, JSON-RPC over HTTP):
  * first answer: the first ``pool.get_all`` answered (target: within 1 s);
  * all listed: ``VM.get_all`` counts every guest and every host says libvirt_sync=synced
    (target: within 5 s);
  * ``VM.get_all_records`` over JSON-RPC for every guest, median of the rounds (target: under 1 s);
  * the server's RSS once everything is listed, and after the listings (target: under 400 MB).
Baseline in the same run: libvirt-python itself opening the same hosts and reading what the
server must read of each (listAllDomains, the state and XMLDesc of every domain), so the
ratio says what the server adds on top of libvirt's own listing.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from common import PASSWORD, XenapiServer, jsonrpc as rpc, node_xml

import libvirt


def libvirt_listing(uris: list[str]) -> float:
    """Seconds for libvirt-python to read every domain's state and XML on every host."""
    start = time.perf_counter()
    for uri in uris:
        conn = libvirt.open(uri)
        for dom in conn.listAllDomains():
            dom.state()
            dom.XMLDesc(0)
        conn.close()
    return time.perf_counter() - start


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_and_wait(nodes: list[str], guests: int) -> tuple[XenapiServer, float, float]:
    """Launch, then time the first answer and the moment every host is synced with every guest
    listed.  One session, polled every 0.1 s with cheap calls, so the measuring costs the server
    little of the CPU it is listing with."""
    launched = time.perf_counter()
    server = XenapiServer(nodes, wait=False)
    url = f"http://127.0.0.1:{server.port}"
    session = first = listed = None
    deadline = launched + 300
    while time.perf_counter() < deadline and listed is None:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited; see {server.dir / 'server.log'}")
        if session is None:
            try:
                session = rpc(url, "session.login_with_password", "root", PASSWORD, "2.21", "bench")
                rpc(url, "pool.get_all", session)
                first = time.perf_counter() - launched
            except (OSError, RuntimeError):
                session = None
                time.sleep(0.01)
            continue
        synced = all(h["other_config"].get("libvirt_sync") == "synced"
                     for h in rpc(url, "host.get_all_records", session).values())
        if synced and len(rpc(url, "VM.get_all", session)) >= guests:
            listed = time.perf_counter() - launched
        else:
            time.sleep(0.1)
    if listed is None:
        raise RuntimeError("not every guest was listed within 300 s")
    server.url = url
    return server, first, listed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    nodes = [node_xml(args.vms, args.vms // 2) for _ in range(args.hosts)]
    guests = args.hosts * (args.vms + 1)          # every guest and each host's control domain

    server, first, listed = start_and_wait(nodes, guests)
    try:
        rss_listed = rss_mb(server.process.pid)
        uris = [f"test://{server.dir / f'node{n}.xml'}" for n in range(args.hosts)]
        baseline = statistics.median(libvirt_listing(uris) for _ in range(args.rounds))
        session = rpc(server.url, "session.login_with_password", "root", PASSWORD, "2.21", "bench")
        timings = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            records = rpc(server.url, "VM.get_all_records", session, timeout=60)
            timings.append(time.perf_counter() - start)
            assert len(records) >= guests
        records_s = statistics.median(timings)
        rss = rss_mb(server.process.pid)
    finally:
        server.stop()

    print(f"{args.hosts} hosts x {args.vms} guests ({guests} VMs with the control domains)")
    print(f"  baseline: libvirt-python reads every domain's state and XML: median {baseline:.2f} s")
    print(f"  first answer after launch:        {first:.2f} s   (target <= 1 s: {'met' if first <= 1 else 'NOT met'})")
    print(f"  every guest listed after launch:  {listed:.2f} s   (target <= 5 s: {'met' if listed <= 5 else 'NOT met'};"
          f" {listed / baseline:.1f}x libvirt's own listing)")
    print(f"  VM.get_all_records (JSON-RPC):    median {records_s:.2f} s, rounds "
          f"{', '.join(f'{t:.2f}' for t in timings)}   (target < 1 s: {'met' if records_s < 1 else 'NOT met'})")
    print(f"  server RSS once listed:           {rss_listed:.0f} MB, after the listings {rss:.0f} MB"
          f"   (target < 400 MB: {'met' if max(rss, rss_listed) < 400 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
