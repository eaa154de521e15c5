"""Requests/second through xmlrpc.client.ServerProxy (one keep-alive connection) against
xenapi's HTTPServer + XML-RPC codec, and against the stdlib SimpleXMLRPCServer (HTTP/1.1)
answering the same envelope with no work.  Prints medians and bests over interleaved rounds
and their ratios (the best is the steadier figure on a shared machine).

    .venv/bin/python bench/bench_http.py [--rounds 9] [--calls 2000]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xenapi.transport.http import HTTPServer, Request, Response  # noqa: E402
from xenapi.wire import Success, WireError  # noqa: E402
from xenapi.wire import xmlrpc as codec  # noqa: E402

RESULT = "OpaqueRef:5f0d2c36-4b0c-4f7e-9c1a-2a8d3e1f0b11"


def ours() -> tuple[str, Callable[[], None]]:
    def handle(request: Request) -> Response:
        try:
            codec.decode(request.body)
        except WireError as e:
            return Response(e.status_hint, "text/plain", str(e).encode())
        return Response(200, "text/xml", codec.encode(Success(RESULT)))

    server = HTTPServer(("127.0.0.1", 0), handle)
    server.start()
    host, port = server.address
    return f"http://{host}:{port}/", server.shutdown


def stdlib() -> tuple[str, Callable[[], None]]:
    class Handler(SimpleXMLRPCRequestHandler):
        protocol_version = "HTTP/1.1"

    server = SimpleXMLRPCServer(("127.0.0.1", 0), requestHandler=Handler, logRequests=False)
    server.register_function(lambda *args: {"Status": "Success", "Value": RESULT}, "VM.get_uuid")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address

    def stop():
        server.shutdown()
        server.server_close()
    return f"http://{host}:{port}/", stop


def rate(url: str, calls: int) -> float:
    proxy = xmlrpc.client.ServerProxy(url)
    call = getattr(proxy, "VM.get_uuid")
    call("OpaqueRef:session", "OpaqueRef:vm")          # connect outside the timed loop
    start = time.perf_counter()
    for _ in range(calls):
        call("OpaqueRef:session", "OpaqueRef:vm")
    elapsed = time.perf_counter() - start
    proxy("close")()
    return calls / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"xenapi": [], "stdlib": []}
    for _ in range(args.rounds):                     # interleaved, so drift hits both alike
        for name, factory in (("xenapi", ours), ("stdlib", stdlib)):
            url, stop = factory()
            try:
                results[name].append(rate(url, args.calls))
            finally:
                stop()
    medians = {name: statistics.median(r) for name, r in results.items()}
    bests = {name: max(r) for name, r in results.items()}
    for name, rates in results.items():
        print(f"{name:7s} median {medians[name]:8.0f} req/s  best {bests[name]:8.0f} req/s  "
              "rounds: " + " ".join(f"{r:.0f}" for r in rates))
    print(f"ratio xenapi/stdlib: median {medians['xenapi'] / medians['stdlib']:.2f}  "
          f"best {bests['xenapi'] / bests['stdlib']:.2f}")


if __name__ == "__main__":
    main()
