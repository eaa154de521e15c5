"""Live migration of the tiny guest between the two lab hosts: through the API (``VM.pool_migrate``,
timed end to end from the client) against ``virsh migrate --live --p2p --persistent
--undefinesource`` of the same guest between the same hosts, run on the source host (in its
namespaces, ``LabHost.run``) to the destination's TCP URI.

    .venv/bin/python bench/bench_migrate.py [--rounds 9]

Needs root (the lab hosts of tests/e2e/lab_hosts.py: two libvirtds in their own namespaces) and
the tiny guest (tests/e2e/guest.py, built once into .cache/guest).  One xenapi server (in this
process, HTTP on loopback, XML-RPC client) over both hosts, as the end-to-end migration tests run
it.  Each round moves the guest twice, once by each side, the directions alternating so that each
side moves it lab1 -> lab2 as often as lab2 -> lab1:
    odd rounds:  API lab1 -> lab2, then virsh lab2 -> lab1;
    even rounds: virsh lab1 -> lab2, then API lab2 -> lab1.
After a virsh move the server is waited for (untimed) until it shows the VM where virsh put it.
The guest runs idle (booted, its shell waiting).  Printed: every round, the medians, the ratio
(API / virsh; target at most 1.1), the engine's own figures (its seconds and libvirt's job time),
and the load average.  Nothing is asserted on time.  Everything is removed at the end, whatever
happens (the VM, the server, the lab hosts).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "e2e")]

import XenAPI  # noqa: E402

import guest  # noqa: E402  (tests/e2e)
import guest_net as gn  # noqa: E402
from lab_hosts import LabHosts  # noqa: E402
from qemu_e2e import tiny_vm_record  # noqa: E402

PASSWORD = "bench-pw"
PRIVATE_LOCAL_SR = "/var/lib/libvirt/images/xenapi-local"


def start_server(lab: LabHosts, state: Path):
    from xenapi.config import Config
    from xenapi.server import Server
    from xenapi.cli import http_api
    from xenapi.transport.http import HTTPServer
    hosts = lab.hosts
    server = Server(Config(listen="127.0.0.1:0", libvirt_uris=[h.uri for h in hosts],
                           host_exec={h.uri: h.exec_prefix for h in hosts},
                           migrate_uris={h.uri: h.tcp_uri for h in hosts}, storage_local_path=PRIVATE_LOCAL_SR,
                           domain_type="qemu", clean_shutdown_timeout=30, libvirt_sync_wait=60, state=str(state)))
    server.users.ensure_admin(PASSWORD)
    server.start()
    http = HTTPServer(("127.0.0.1", 0), http_api(server))
    http.start()
    session = XenAPI.Session(f"http://127.0.0.1:{http.address[1]}")
    session.xenapi.login_with_password("root", PASSWORD, "2.21", "bench")
    return server, http, session


def until(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"never: {what}")
        time.sleep(0.01)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    tiny = guest.build()
    lab = LabHosts()
    tmp = Path(tempfile.mkdtemp(prefix="xenapi-bench-migrate-"))
    server = http = session = vm = shell = None
    try:
        lab.start()
        server, http, session = start_server(lab, tmp / "state")
        x = session.xenapi
        by_name = {rec["hostname"]: ref for ref, rec in x.host.get_all_records().items()}
        ref = {h.name: by_name[h.name] for h in lab.hosts}
        vm = x.VM.create({**tiny_vm_record(tiny, "migrating guest (bench)"), "affinity": ref["lab1"]})
        uuid = x.VM.get_uuid(vm)
        import libvirt
        x.VM.start_on(vm, ref["lab1"], True, False)
        with contextlib.closing(libvirt.open(lab.lab1.uri)) as conn:
            shell = gn.GuestShell.of_domain(conn.lookupByUUIDString(uuid), tmp / "console.log", name="bench")
        x.VM.unpause(vm)
        shell.wait_ready(120)
        shell.close()
        shell = None
        here = "lab1"

        def other(name: str) -> str:
            return "lab2" if name == "lab1" else "lab1"

        def host(name: str):
            return lab.lab1 if name == "lab1" else lab.lab2

        def api_move() -> float:
            nonlocal here
            to = other(here)
            t0 = time.perf_counter()
            x.VM.pool_migrate(vm, ref[to], {})
            elapsed = time.perf_counter() - t0
            here = to
            return elapsed

        def virsh_move() -> float:
            nonlocal here
            to = other(here)
            t0 = time.perf_counter()
            host(here).run("virsh", "migrate", "--live", "--p2p", "--persistent", "--undefinesource", uuid,
                           host(to).tcp_uri, timeout=300)
            elapsed = time.perf_counter() - t0
            here = to
            names = {r: n for n, r in ref.items()}
            try:
                until(lambda: (x.VM.get_resident_on(vm), x.VM.get_power_state(vm)) == (ref[to], "Running"),
                      f"the server shows the VM on {to} after virsh migrate")
            except SystemExit:
                print(f"after virsh migrate {other(to)} -> {to} the server shows {x.VM.get_power_state(vm)} on "
                      f"{names.get(x.VM.get_resident_on(vm), 'nowhere')}; libvirt: "
                      f"{ {h.name: h.run('virsh', 'domstate', uuid, check=False).stdout.strip() for h in lab.hosts} }")
                raise
            return elapsed

        # one untimed move each way first (a run's first migration pays for warming up)
        api_move()
        virsh_move()
        api_rounds, virsh_rounds, engine = [], [], []
        for n in range(args.rounds):
            if n % 2 == 0:
                a_from = here
                a = api_move()
                v_from = here
                v = virsh_move()
            else:
                v_from = here
                v = virsh_move()
                a_from = here
                a = api_move()
            figures = server.migration.last[vm]
            api_rounds.append(a)
            virsh_rounds.append(v)
            engine.append(figures)
            print(f"round {n + 1}: API {a_from}->{other(a_from)} {a * 1000:.0f} ms (engine {figures['seconds'] * 1000:.0f} ms, "
                  f"libvirt job {figures.get('job_ms', '?')} ms, downtime {figures.get('downtime_ms', '?')} ms); "
                  f"virsh {v_from}->{other(v_from)} {v * 1000:.0f} ms", flush=True)
        ma, mv = statistics.median(api_rounds), statistics.median(virsh_rounds)
        me = statistics.median(f["seconds"] for f in engine)
        jobs = [f["job_ms"] for f in engine if "job_ms" in f]
        print(f"live migration of the tiny guest ({args.rounds} rounds, alternating directions):")
        print(f"  API (VM.pool_migrate) median {ma * 1000:.0f} ms (engine {me * 1000:.0f} ms"
              + (f", libvirt job {statistics.median(jobs):.0f} ms" if jobs else "") + ")")
        print(f"  virsh migrate --live --p2p median {mv * 1000:.0f} ms")
        print(f"  ratio {ma / mv:.3f} (target <= 1.1: {'met' if ma / mv <= 1.1 else 'NOT met'})")
        print(f"  rounds API:   {', '.join(f'{v * 1000:.0f}' for v in api_rounds)}")
        print(f"  rounds virsh: {', '.join(f'{v * 1000:.0f}' for v in virsh_rounds)}")
        print(f"  load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}, {os.cpu_count()} CPUs")
    finally:
        if shell is not None:
            shell.close()
        if session is not None:
            x = session.xenapi
            if vm is not None:
                with contextlib.suppress(Exception):
                    x.VM.hard_shutdown(vm)
                with contextlib.suppress(Exception):
                    x.VM.destroy(vm)
            with contextlib.suppress(Exception):
                x.session.logout()
        if http is not None:
            http.shutdown()
        if server is not None:
            server.stop()
        lab.stop()
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
