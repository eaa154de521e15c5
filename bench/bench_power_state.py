"""Authenticated VM.get_power_state calls per second through the official XenAPI client, against
xenapi and against a stdlib SimpleXMLRPCServer (HTTP/1.1 keep-alive) answering the same call with
no work at all.  Each server runs in its own process; rounds alternate so noise hits both alike.

    .venv/bin/python bench/bench_power_state.py [--rounds 5] [--calls 2000]
Target: ratio (xenapi / baseline) at least 1.0.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

from common import PASSWORD, XenapiServer, compare, free_port, node_xml, wait_for_port

import XenAPI

BASELINE = r'''
import sys
from xmlrpc.server import SimpleXMLRPCServer, SimpleXMLRPCRequestHandler
class Handler(SimpleXMLRPCRequestHandler):
    protocol_version = "HTTP/1.1"
    rpc_paths = ()                    # every path, as XenAPI posts to /RPC2
server = SimpleXMLRPCServer(("127.0.0.1", int(sys.argv[1])), Handler, logRequests=False, allow_none=True)
server.register_function(lambda *a: {"Status": "Success", "Value": "OpaqueRef:00000000-0000-0000-0000-000000000001"},
                         "session.login_with_password")
server.register_function(lambda *a: {"Status": "Success", "Value": "Running"}, "VM.get_power_state")
server.serve_forever()
'''


def rate(url: str, calls: int) -> float:
    session = XenAPI.Session(url)
    session.xenapi.login_with_password("root", PASSWORD, "2.21", "bench")
    vm = "OpaqueRef:00000000-0000-0000-0000-000000000002"
    if "127.0.0.1" in url and hasattr(session.xenapi, "VM"):
        try:
            vm = next(r for r, v in session.xenapi.VM.get_all_records().items() if not v["is_control_domain"])
        except Exception:
            pass
    get = session.xenapi.VM.get_power_state
    for _ in range(100):
        get(vm)
    start = time.perf_counter()
    for _ in range(calls):
        get(vm)
    return calls / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    ours = XenapiServer(node_xml(4, 2))
    port = free_port()
    base = subprocess.Popen([sys.executable, "-c", BASELINE, str(port)])
    try:
        wait_for_port(port, 30)
        compare("VM.get_power_state calls/s", args.rounds, lambda: rate(ours.url, args.calls),
                lambda: rate(f"http://127.0.0.1:{port}", args.calls), "calls/s",
                higher_is_better=True, target=1.0)
    finally:
        base.terminate()
        ours.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
