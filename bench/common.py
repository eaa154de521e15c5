"""What the benchmarks share: servers in their own processes, medians, ratio printing."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.ports import free_port, wait_for_port  # noqa: E402  (after the path)
from tests.serve_process import wait_until_synced  # noqa: E402

import XenAPI  # noqa: E402

PASSWORD = "bench-pw"


class XenapiServer:
    """``xenapi serve`` in a subprocess, on libvirt test-driver hosts, one per node XML given,
    or on the libvirt URIs given as ``uris`` (a private libvirtd's, qemu:///system)."""

    def __init__(self, node_xml: str | list[str] | None = None, *, uris: tuple[str, ...] = (),
                 wait: bool = True):
        self.dir = Path(tempfile.mkdtemp(prefix="xenapi-bench-"))
        hosts = []
        for n, xml in enumerate([] if node_xml is None else [node_xml] if isinstance(node_xml, str) else node_xml):
            (self.dir / f"node{n}.xml").write_text(xml)
            hosts += ["--libvirt", f"test://{self.dir / f'node{n}.xml'}"]
        for uri in uris:
            hosts += ["--libvirt", uri]
        self.port = free_port()
        env = {**os.environ, "XENAPI_ADMIN_PASSWORD": PASSWORD}
        self.process = subprocess.Popen(
            [str(ROOT / ".venv/bin/xenapi"), "serve", "--listen", f"127.0.0.1:{self.port}",
             "--state", str(self.dir / "state"), *hosts],
            env=env, stdout=subprocess.DEVNULL, stderr=open(self.dir / "server.log", "wb"))
        if wait:
            wait_for_port(self.port, 120, proc=self.process, log=self.dir / "server.log")
            session = XenAPI.Session(f"http://127.0.0.1:{self.port}")
            session.xenapi.login_with_password("root", PASSWORD, "2.21", "bench")
            wait_until_synced(session, 300)
            session.xenapi.session.logout()
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def jsonrpc(url: str, method: str, *params, timeout: float = 60.0):
    """One JSON-RPC call to the server's /jsonrpc endpoint; its result (RuntimeError if an error)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
    request = urllib.request.Request(url + "/jsonrpc", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.loads(response.read())
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer["result"]


def node_xml(domains: int, running: int) -> str:
    from tests.conftest import node_xml as make
    return make(domains, running)


def compare(name: str, rounds: int, ours, base, unit: str, *, higher_is_better: bool,
            target: float) -> float:
    """Measure ``ours()`` and ``base()`` in alternating rounds (so a noisy neighbour hits both
    alike), print medians, each round and the ratio ours/baseline against ``target``."""
    ours_v, base_v = [], []
    for _ in range(rounds):
        ours_v.append(ours())
        base_v.append(base())
    mo, mb = statistics.median(ours_v), statistics.median(base_v)
    ratio = mo / mb
    better = "higher" if higher_is_better else "lower"
    print(f"{name}: xenapi median {mo:.1f} {unit}, baseline median {mb:.1f} {unit}, "
          f"ratio {ratio:.2f} ({better} is better)")
    print(f"  rounds xenapi:   {', '.join(f'{v:.1f}' for v in ours_v)}")
    print(f"  rounds baseline: {', '.join(f'{v:.1f}' for v in base_v)}")
    met = ratio >= target if higher_is_better else ratio <= target
    print(f"target {'>=' if higher_is_better else '<='} {target}: {'met' if met else 'NOT met'}")
    return ratio
