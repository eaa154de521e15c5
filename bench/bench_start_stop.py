"""Starting and hard-shutting-down a real QEMU guest through the API, against doing the same with
virsh, on the same libvirtd (qemu:///system, started with scripts/libvirtd.sh if it does not
answer) and the same domain: the tiny guest of tests/e2e/guest.py (TCG).

xenapi side: the official XenAPI client calls VM.start then VM.hard_shutdown on a server running
in its own process.  Baseline: ``virsh start X`` then ``virsh destroy X``, each its own process,
as an administrator would type them.  Rounds alternate so noise hits both alike.

    .venv/bin/python bench/bench_start_stop.py [--rounds 7] [--cycles 5]
Target: ratio (xenapi / virsh) at most 1.1.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from common import PASSWORD, ROOT, compare, free_port, wait_for_port

sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import guest  # noqa: E402
import libvirt  # noqa: E402
import XenAPI  # noqa: E402

URI = "qemu:///system"


def virsh(*args: str) -> None:
    subprocess.run(["virsh", "-q", "-c", URI, *args], check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def per_cycle_ms(cycle, cycles: int) -> float:
    start = time.perf_counter()
    for _ in range(cycles):
        cycle()
    return (time.perf_counter() - start) * 1000 / cycles


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cycles", type=int, default=5, help="start+stop cycles per round and side")
    args = parser.parse_args()
    subprocess.run(["bash", str(ROOT / "scripts" / "libvirtd.sh"), "start"], check=True, stdin=subprocess.DEVNULL)
    tiny = guest.build()
    work = tempfile.mkdtemp(prefix="xenapi-bench-")
    conn = libvirt.open(URI)
    name = f"xbench-{os.getpid()}"
    dom = conn.defineXML(tiny.domain_xml(name, os.path.join(work, "serial.log")))
    port = free_port()
    server = subprocess.Popen([str(ROOT / ".venv/bin/xenapi"), "serve", "--listen", f"127.0.0.1:{port}",
                               "--state", os.path.join(work, "state"), "--libvirt", URI],
                              env={**os.environ, "XENAPI_ADMIN_PASSWORD": PASSWORD},
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "server.log"), "wb"))
    try:
        wait_for_port(port, 120)
        session = XenAPI.Session(f"http://127.0.0.1:{port}")
        session.xenapi.login_with_password("root", PASSWORD, "2.21", "bench")
        vm = session.xenapi.VM.get_by_uuid(dom.UUIDString())

        def api_cycle():
            session.xenapi.VM.start(vm, False, False)
            session.xenapi.VM.hard_shutdown(vm)

        def virsh_cycle():
            virsh("start", name)
            virsh("destroy", name)

        for cycle in (api_cycle, virsh_cycle):     # warm up both paths (QEMU binary, page cache)
            cycle()
        compare(f"start + hard shutdown of a real QEMU guest ({args.cycles} per round)", args.rounds,
                lambda: per_cycle_ms(api_cycle, args.cycles), lambda: per_cycle_ms(virsh_cycle, args.cycles),
                "ms per cycle", higher_is_better=False, target=1.1)
        session.xenapi.session.logout()
    except BaseException:
        print(open(os.path.join(work, "server.log"), errors="replace").read()[-3000:], file=sys.stderr)
        raise
    finally:
        server.terminate()
        server.wait(timeout=30)
        if dom.isActive():
            dom.destroy()
        dom.undefine()
        conn.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
