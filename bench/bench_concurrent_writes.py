"""VM.add_to_other_config from 8 concurrent clients on one VM, against the same calls from one
client: the aggregate rate of the eight divided by the one's.  Each client has its own XenAPI
session, connection and keys (threads of one process; ``--processes`` for a process each).  Every
round writes a fresh VM (so the map grows alike in both), and afterwards every key must be there
(atomic map messages lose none).  Rounds alternate so noise hits both alike.

    .venv/bin/python bench/bench_concurrent_writes.py [--rounds 5] [--calls 800] [--clients 8] [--processes]
Target: ratio (8 clients / 1 client) at least 1.0: atomicity must not serialise the server.
"""
from __future__ import annotations

import argparse
import multiprocessing
import queue
import sys
import threading
import time

from common import PASSWORD, XenapiServer, compare, node_xml

import XenAPI


def _client(url: str, vm: str, prefix: str, calls: int, ready, go, out) -> None:
    session = XenAPI.Session(url)
    session.xenapi.login_with_password("root", PASSWORD, "2.21", "bench")
    add = session.xenapi.VM.add_to_other_config
    session.xenapi.VM.get_other_config(vm)           # connect outside the timed part
    ready.wait()
    go.wait()
    start = time.monotonic()
    for n in range(calls):
        add(vm, f"{prefix}-{n}", "x")
    out.put((start, time.monotonic()))
    session.xenapi.session.logout()


def rate(url: str, vms: list[str], clients: int, calls: int, processes: bool) -> float:
    """calls/s of ``clients`` clients sharing ``calls`` add_to_other_config (client n on
    ``vms[n % len(vms)]``), from the first start to the last finish.  Clients are threads of one
    process unless ``processes``: on a machine with few cores and other work, eight client
    processes take CPU shares from the server that one client does not, and the ratio would
    measure the scheduler rather than the server."""
    if processes:
        ctx = multiprocessing.get_context("fork")
        ready, go, out, start = ctx.Barrier(clients + 1), ctx.Event(), ctx.Queue(), ctx.Process
    else:
        ready, go, out = threading.Barrier(clients + 1), threading.Event(), queue.Queue()
        start = threading.Thread
    share = calls // clients
    workers = [start(target=_client, args=(url, vms[n % len(vms)], f"c{n}", share, ready, go, out))
               for n in range(clients)]
    for w in workers:
        w.start()
    ready.wait()
    go.set()
    spans = [out.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    check = XenAPI.Session(url)
    check.xenapi.login_with_password("root", PASSWORD, "2.21", "bench")
    have = sum(len(check.xenapi.VM.get_other_config(vm)) for vm in vms)
    check.xenapi.session.logout()
    if have != share * clients:
        print(f"  LOST UPDATES: {have} keys of {share * clients} on {len(vms)} VM(s)")
    return share * clients / (max(end for _, end in spans) - min(start for start, _ in spans))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=800)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--processes", action="store_true", help="a process per client instead of a thread")
    args = parser.parse_args()
    ours = XenapiServer(node_xml(2 * args.rounds, 0))
    try:
        session = XenAPI.Session(ours.url)
        session.xenapi.login_with_password("root", PASSWORD, "2.21", "bench")
        vms = iter(sorted(r for r, v in session.xenapi.VM.get_all_records().items() if not v["is_control_domain"]))
        session.xenapi.session.logout()
        compare(f"VM.add_to_other_config calls/s, {args.clients} clients on one VM / 1 client", args.rounds,
                lambda: rate(ours.url, [next(vms)], args.clients, args.calls, args.processes),
                lambda: rate(ours.url, [next(vms)], 1, args.calls, args.processes), "calls/s",
                higher_is_better=True, target=1.0)
    finally:
        ours.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
