"""Soak: an hour of mixed calls from several clients against ``xenapi serve`` on the embedded
default (libvirt's test driver), watching the server's memory, file descriptors and threads.

The server runs as a subprocess on 127.0.0.1 with a temporary state directory.  Client threads,
each a loop that ends at the deadline, make the calls real clients make:

* readers: get_all_records of VMs, hosts and metrics, get_record, get_all_records_where, over
  XML-RPC (the official XenAPI client, one kept-alive connection) and JSON-RPC (a new connection
  per call);
* writers: name_description, other_config and tags on the VMs they created;
* lifecycle: VM.create, start, pause/unpause, clean or hard shutdown, destroy, some as Async calls
  waited for through their task;
* event listeners: log in, event.from in a loop for a while (or the legacy event.register/next),
  then leave, mostly logging out, sometimes not, and come back;
* login churn: log in, one call, log out.

Every ``--interval`` seconds (60 by default) it records the server's RSS, open file descriptors
and threads from /proc/<pid>.  At the end it prints the samples, the calls made and failed, and
whether each figure is flat after the warm-up: the median of the last third of the samples after
warm-up against the median of the first third (RSS within 10 %, descriptors and threads within
10 % or a few).

    .venv/bin/python bench/soak.py                             # an hour
    .venv/bin/python bench/soak.py --duration 180 --interval 10 --warmup 30
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xmlrpc.client
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import XenAPI  # noqa: E402  (after the path)

from tests.conftest import vm_create_args  # noqa: E402
from tests.ports import free_port, wait_for_port  # noqa: E402

PASSWORD = "soak-pw"
MIB = 1024 * 1024
TIMEOUT = 60.0                           # any one call; event.from asks for at most 5 s


def vm_record(label: str) -> dict:
    """VM.create's record: a small HVM guest (128 MiB, one vCPU)."""
    return vm_create_args(name_label=label, name_description="soak", memory_static_max=str(128 * MIB),
                          memory_dynamic_max=str(128 * MIB), memory_dynamic_min=str(128 * MIB),
                          memory_static_min=str(128 * MIB), VCPUs_max="1", other_config={"soak": "yes"})


# -- the server -------------------------------------------------------------------------------------

class Server:
    """``xenapi serve`` on the embedded default, in its own process."""

    def __init__(self, work: Path, config: Path | None = None):
        self.port = free_port()
        self.log = work / "server.log"
        env = {**os.environ, "XENAPI_ADMIN_PASSWORD": PASSWORD}
        self.process = subprocess.Popen(
            [str(ROOT / ".venv/bin/xenapi"), "serve", "--listen", f"127.0.0.1:{self.port}",
             "--state", str(work / "state"), *(["--config", str(config)] if config else [])],
            env=env, stdout=subprocess.DEVNULL, stderr=self.log.open("wb"), cwd=work)
        wait_for_port(self.port, 120, proc=self.process, log=self.log)
        self.url = f"http://127.0.0.1:{self.port}"

    def sample(self) -> dict:
        """RSS (MiB), open descriptors and threads of the server process, from /proc."""
        pid = self.process.pid
        status = Path(f"/proc/{pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return {"rss_mib": int(fields["VmRSS"].split()[0]) / 1024, "fds": len(os.listdir(f"/proc/{pid}/fd")),
                "threads": int(fields["Threads"])}

    def stop(self) -> int | None:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


# -- the clients ------------------------------------------------------------------------------------

class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.calls = Counter()
        self.failures = Counter()        # (kind, code): Xen-API failures, by code
        self.problems = Counter()        # what must not happen: INTERNAL_ERROR, broken connections
        self.examples = {}

    def call(self, kind: str) -> None:
        with self.lock:
            self.calls[kind] += 1

    def failed(self, kind: str, code: str) -> None:
        with self.lock:
            self.failures[(kind, code)] += 1

    def problem(self, kind: str, what: str, detail: str) -> None:
        with self.lock:
            self.problems[(kind, what)] += 1
            self.examples.setdefault((kind, what), detail[:400])


# Failures a mix like this meets in normal running (racing another client on a VM it is stopping,
# an object destroyed under a listing): counted, not problems.
EXPECTED = {"VM_BAD_POWER_STATE", "OTHER_OPERATION_IN_PROGRESS", "HANDLE_INVALID", "OPERATION_NOT_ALLOWED",
            "VM_SHUTDOWN_TIMEOUT", "MAP_DUPLICATE_KEY"}


class Client(threading.Thread):
    def __init__(self, kind: str, n: int, url: str, deadline: float, tally: Tally, pause: float, seed: int):
        super().__init__(name=f"{kind}-{n}", daemon=True)
        self.kind, self.n, self.url, self.deadline, self.tally, self.pause = kind, n, url, deadline, tally, pause
        self.rng = random.Random(seed)
        self.session: XenAPI.Session | None = None
        self.mine: list[str] = []        # VMs this client made and has not destroyed yet

    # - plumbing -
    def login(self) -> XenAPI.Session:
        s = XenAPI.Session(self.url)
        s.xenapi.login_with_password("root", PASSWORD, "2.21", f"soak-{self.kind}")
        self.tally.call("login")
        return s

    def logout(self, s: XenAPI.Session) -> None:
        try:
            s.xenapi.session.logout()
            self.tally.call("logout")
        except Exception as e:           # noqa: BLE001
            self.tally.problem(self.kind, "logout failed", repr(e))

    def x(self):
        if self.session is None:
            self.session = self.login()
        return self.session.xenapi

    def json(self, method: str, *params):
        """One JSON-RPC call on a connection of its own (the session's ref as its first param)."""
        conn = http.client.HTTPConnection("127.0.0.1", int(self.url.rsplit(":", 1)[1]), timeout=TIMEOUT)
        try:
            body = json.dumps({"jsonrpc": "2.0", "method": method, "params": [self.session._session, *params],
                               "id": self.rng.randrange(1 << 30)})
            conn.request("POST", "/jsonrpc", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            reply = json.loads(resp.read())
        finally:
            conn.close()
        if "error" in reply:
            raise XenAPI.Failure([reply["error"]["message"], *reply["error"].get("data", [])])
        return reply["result"]

    def run(self):
        step = getattr(self, f"step_{self.kind}")
        while time.monotonic() < self.deadline:
            try:
                step()
            except XenAPI.Failure as e:
                code = e.details[0] if e.details else "?"
                self.tally.failed(self.kind, code)
                if code not in EXPECTED:
                    self.tally.problem(self.kind, code, repr(e.details))
                if code == "SESSION_INVALID":
                    self.session = None
            except (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError, ValueError) as e:
                self.tally.problem(self.kind, type(e).__name__, repr(e))
                self.session = None      # a fresh connection
                time.sleep(1)
            except Exception as e:       # noqa: BLE001 - a soak reports, it does not stop
                self.tally.problem(self.kind, type(e).__name__, traceback.format_exc())
                time.sleep(1)
            time.sleep(self.pause * (0.5 + self.rng.random()))
        self.cleanup()

    def cleanup(self):
        for vm in self.mine:
            try:
                if self.x().VM.get_power_state(vm) != "Halted":
                    self.x().VM.hard_shutdown(vm)
                self.x().VM.destroy(vm)
            except Exception:            # noqa: BLE001
                pass
        if self.session is not None:
            self.logout(self.session)

    # - the mixes -
    def step_reader(self):
        x = self.x()
        roll = self.rng.random()
        if roll < 0.25:
            x.VM.get_all_records()
            self.tally.call("VM.get_all_records")
        elif roll < 0.4:
            self.json("VM.get_all_records")
            self.tally.call("json VM.get_all_records")
        elif roll < 0.55:
            for ref in x.host.get_all():
                x.host.get_record(ref)
                x.host_metrics.get_record(x.host.get_metrics(ref))
            self.tally.call("host.get_record")
        elif roll < 0.7:
            x.VM.get_all_records_where('field "power_state" = "Running" and field "is_a_template" = "false"')
            self.tally.call("VM.get_all_records_where")
        elif roll < 0.85:
            vms = x.VM.get_all()
            if vms:
                vm = self.rng.choice(vms)
                x.VM.get_record(vm)
                self.json("VM_metrics.get_record", x.VM.get_metrics(vm))
            self.tally.call("VM.get_record")
        else:
            x.pool.get_record(x.pool.get_all()[0])
            self.json("task.get_all_records")
            self.tally.call("pool/task records")

    def step_writer(self):
        x = self.x()
        if len(self.mine) < 2:
            self.mine.append(x.VM.create(vm_record(f"soak-w{self.n}-{len(self.mine)}")))
            self.tally.call("VM.create")
            return
        vm = self.rng.choice(self.mine)
        roll = self.rng.random()
        if roll < 0.3:
            x.VM.set_name_description(vm, f"soak {time.time():.3f}")
            self.tally.call("VM.set_name_description")
        elif roll < 0.65:
            key = f"k{self.rng.randrange(20)}"
            x.VM.remove_from_other_config(vm, key)
            x.VM.add_to_other_config(vm, key, "v" * self.rng.randrange(1, 200))
            self.tally.call("VM.add_to_other_config")
        else:
            tag = f"t{self.rng.randrange(10)}"
            (x.VM.add_tags if self.rng.random() < 0.5 else x.VM.remove_tags)(vm, tag)
            self.tally.call("VM tags")

    def step_lifecycle(self):
        x = self.x()
        vm = x.VM.create(vm_record(f"soak-l{self.n}"))
        self.mine.append(vm)
        self.tally.call("VM.create")
        if self.rng.random() < 0.5:
            self.wait_task(x.Async.VM.start(vm, False, False))
        else:
            x.VM.start(vm, False, False)
        self.tally.call("VM.start")
        if self.rng.random() < 0.3:
            x.VM.pause(vm)
            x.VM.unpause(vm)
            self.tally.call("VM.pause/unpause")
        x.VM.get_record(vm)
        if self.rng.random() < 0.5:
            x.VM.clean_shutdown(vm)
            self.tally.call("VM.clean_shutdown")
        else:
            self.wait_task(x.Async.VM.hard_shutdown(vm))
            self.tally.call("VM.hard_shutdown")
        x.VM.destroy(vm)
        self.mine.remove(vm)
        self.tally.call("VM.destroy")

    def wait_task(self, task: str) -> None:
        x = self.x()
        deadline = time.monotonic() + TIMEOUT
        while x.task.get_status(task) == "pending":
            if time.monotonic() > deadline:
                self.tally.problem(self.kind, "task never ended", task)
                break
            time.sleep(0.05)
        rec = x.task.get_record(task)
        x.task.destroy(task)
        self.tally.call("task")
        if rec["status"] == "failure":
            raise XenAPI.Failure(rec["error_info"])

    def step_listener(self):
        """Join, follow events for a while (event.from, or the legacy register/next), leave: mostly
        logging out, sometimes just dropping the connection as a killed client does."""
        s = self.login()
        polite = self.rng.random() < 0.8
        try:
            if self.rng.random() < 0.7:
                token = s.xenapi.event_from(["vm", "task"], "", 0.0)["token"]
                for _ in range(self.rng.randrange(1, 8)):
                    if time.monotonic() >= self.deadline:
                        break
                    batch = s.xenapi.event_from(["vm", "task", "host"], token, float(self.rng.randrange(1, 6)))
                    token = batch["token"]
                    self.tally.call("event.from")
            else:
                s.xenapi.event.register(["*"])
                for _ in range(self.rng.randrange(1, 4)):      # the lifecycle clients keep VMs changing
                    if time.monotonic() >= self.deadline:
                        break
                    s.xenapi.event.next()
                    self.tally.call("event.next")
                s.xenapi.event.unregister(["*"])
        finally:
            if polite:
                self.logout(s)
            else:
                self.tally.call("left without logout")

    def step_churn(self):
        s = self.login()
        try:
            s.xenapi.pool.get_all()
            self.tally.call("pool.get_all")
        finally:
            self.logout(s)


def wake(url: str) -> None:
    """Change the pool, so that every event.next returns."""
    s = XenAPI.Session(url)
    s.xenapi.login_with_password("root", PASSWORD, "2.21", "soak")
    pool = s.xenapi.pool.get_all()[0]
    s.xenapi.pool.set_name_description(pool, f"soak ended {time.time():.0f}")
    s.xenapi.session.logout()


# -- the report -------------------------------------------------------------------------------------

def flat(before: list[float], after: list[float], share: float, slack: float) -> tuple[bool, float, float]:
    a, b = statistics.median(before), statistics.median(after)
    return b <= a * (1 + share) + slack, a, b


def report(samples: list[dict], warmup: float, tally: Tally, duration: float) -> bool:
    print("\n   min |   RSS MiB |  fds | threads | calls so far")
    for s in samples:
        print(f"{s['t'] / 60:6.1f} | {s['rss_mib']:9.1f} | {s['fds']:4d} | {s['threads']:7d} | {s['calls']:,}")
    steady = [s for s in samples if s["t"] >= warmup]
    verdict = True
    if len(steady) < 3:
        print(f"\nflatness: too few samples after the {warmup:g} s warm-up ({len(steady)}; need 3)")
        verdict = False
    else:
        third = max(1, len(steady) // 3)
        first, last = steady[:third], steady[-third:]
        print(f"\nflat after warm-up ({warmup:g} s)? median of the last {third} samples against the first {third}:")
        for key, share, slack in (("rss_mib", 0.10, 0.0), ("fds", 0.10, 3), ("threads", 0.10, 2)):
            ok, a, b = flat([s[key] for s in first], [s[key] for s in last], share, slack)
            verdict &= ok
            print(f"  {key:8} {a:9.1f} -> {b:9.1f}  {'flat' if ok else 'GROWING'}")
    total = sum(tally.calls.values())
    print(f"\ncalls: {total:,} in {duration:,.0f} s ({total / max(duration, 1):,.0f}/s): "
          + ", ".join(f"{k} {v:,}" for k, v in tally.calls.most_common()))
    if tally.failures:
        print("Xen-API failures (expected in this mix unless listed as problems): "
              + ", ".join(f"{k}/{c} {n:,}" for (k, c), n in tally.failures.most_common()))
    if tally.problems:
        verdict = False
        print("PROBLEMS:")
        for (kind, what), n in tally.problems.most_common():
            print(f"  {n:,} {kind}: {what}  e.g. {tally.examples[(kind, what)]}")
    else:
        print("problems: none")
    print(f"\nverdict: {'flat, no problems' if verdict else 'NOT flat or problems seen'}")
    return verdict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3600, help="seconds of load (default 3600)")
    parser.add_argument("--interval", type=float, default=60, help="seconds between samples (default 60)")
    parser.add_argument("--warmup", type=float, help="seconds left out of the flatness check (default: a sixth)")
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--lifecycles", type=int, default=2)
    parser.add_argument("--listeners", type=int, default=3)
    parser.add_argument("--churners", type=int, default=1)
    parser.add_argument("--pause", type=float, default=0.05, help="seconds each client rests between steps")
    parser.add_argument("--config", type=Path, help="a settings file for the server (see xenapi.conf)")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (server log, state)")
    args = parser.parse_args()
    warmup = args.duration / 6 if args.warmup is None else args.warmup

    socket.setdefaulttimeout(TIMEOUT)     # every client connection: a stuck call is seen, not waited on
    work = Path(tempfile.mkdtemp(prefix="xenapi-soak-"))
    server = Server(work, args.config and args.config.resolve())
    print(f"soak: {args.duration:g} s against {server.url} (pid {server.process.pid}, embedded default), "
          f"sampling every {args.interval:g} s; work dir {work}", flush=True)
    tally = Tally()
    start = time.monotonic()
    deadline = start + args.duration
    clients = []
    for kind, count in (("reader", args.readers), ("writer", args.writers), ("lifecycle", args.lifecycles),
                        ("listener", args.listeners), ("churn", args.churners)):
        clients += [Client(kind, n, server.url, deadline, tally, args.pause, seed=hash((kind, n)))
                    for n in range(count)]
    samples = []

    def sample():
        s = server.sample()
        s.update(t=time.monotonic() - start, calls=sum(tally.calls.values()))
        samples.append(s)
        print(f"  {s['t'] / 60:5.1f} min  RSS {s['rss_mib']:.1f} MiB  fds {s['fds']}  threads {s['threads']}  "
              f"calls {s['calls']:,}", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    code = 1
    try:
        sample()
        for c in clients:
            c.start()
        while not stop.is_set() and time.monotonic() < deadline:
            stop.wait(min(args.interval, max(0.0, deadline - time.monotonic())))
            if server.process.poll() is not None:
                tally.problem("server", "exited", f"status {server.process.returncode}")
                break
            sample()
        for c in clients:
            c.deadline = 0
        wake(server.url)                 # an event, for a listener blocked in event.next
        for c in clients:
            c.join(timeout=TIMEOUT + 10)
        stuck = [c.name for c in clients if c.is_alive()]
        if stuck:
            tally.problem("clients", "did not stop", ", ".join(stuck))
        code = 0 if report(samples, warmup, tally, time.monotonic() - start) else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        status = server.stop()
        print(f"server stopped (exit status {status}); log: {server.log if args.keep else 'removed'}")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
