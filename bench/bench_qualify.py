"""Host qualification over a pool of 100 libvirt test-driver hosts of varied memory and CPUs
(1 to 16 GiB, 1 to 8 CPUs, three guests each, one running), through the official XenAPI client
(XML-RPC over one keep-alive HTTP connection).

    .venv/bin/python bench/bench_qualify.py [--hosts 100] [--rounds 7]

Two pools in one run: guests without a CPU definition, and guests with a custom CPU model (then
the CPU check asks each host's libvirt, compareHypervisorCPU, which the test driver answers
"unsupported", so the check passes after the round trip).  In each, one halted guest, given 2 GiB
so that the smaller hosts turn it down, and a VIF on the pool-wide network, is qualified against
every host:
  * ``host.qualify(vm, host)`` once per host, the total (target: under 0.5 s for 100 hosts);
  * ``VM.get_possible_hosts(vm)`` once (target: under 0.5 s over 100 hosts).
Baselines in the same run, rounds alternating with the measured calls so a noisy neighbour hits
both alike: as many ``host.get_uuid(host)`` calls (the same round trips, no checks), and one
``host.get_all`` (an answer of the same size, no checks); the ratios say what the checks cost
beyond the wire.  Medians of the rounds; nothing is asserted on time.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from common import PASSWORD, XenapiServer

import XenAPI

from tests.conftest import node_xml

GiB_KIB = 1 << 20


def pool(hosts: int) -> list[str]:
    """Hosts of 1 to 16 GiB and 1 to 8 CPUs, three guests each (one running)."""
    return [node_xml(3, 1, memory_kib=(1 + n % 16) * GiB_KIB, cpus=1 + n % 8) for n in range(hosts)]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


CPU = "<cpu mode='custom' match='exact'><model>qemu64</model></cpu>"


def run(hosts: int, rounds: int, guest_cpu: bool) -> dict:
    """Start a server over the pool, qualify one VM against every host, time it and its baselines."""
    nodes = pool(hosts)
    if guest_cpu:           # every guest a custom CPU model: the CPU check asks each host's libvirt
        nodes = [xml.replace("<vcpu>1</vcpu>", f"<vcpu>1</vcpu>{CPU}") for xml in nodes]
    launched = time.perf_counter()
    server = XenapiServer(nodes)
    ready = time.perf_counter() - launched
    try:
        session = XenAPI.Session(server.url)
        session.xenapi.login_with_password("root", PASSWORD, "2.21", "bench")
        x = session.xenapi
        refs = x.host.get_all()
        assert len(refs) == hosts, len(refs)
        vm = next(r for r, v in sorted(x.VM.get_all_records().items())
                  if not v["is_control_domain"] and not v["is_a_template"] and v["power_state"] == "Halted")
        two = str(2 << 30)
        x.VM.set_memory_limits(vm, str(256 << 20), two, two, two)
        # a VIF on the pool-wide network (eth1, a PIF on every host), so the network check has work
        network = max(x.network.get_all_records().items(), key=lambda item: len(item[1]["PIFs"]))[0]
        x.VIF.create({"device": "0", "network": network, "VM": vm, "MAC": "", "MTU": "1500",
                      "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})

        answers = {h: x.host.qualify(vm, h) for h in refs}
        possible = x.VM.get_possible_hosts(vm)
        assert sorted(possible) == sorted(h for h, ok in answers.items() if ok), "qualify and get_possible_hosts differ"

        t = {"qualify": [], "get_uuid": [], "possible": [], "get_all": []}
        for _ in range(rounds):
            t["qualify"].append(timed(lambda: [x.host.qualify(vm, h) for h in refs]))
            t["get_uuid"].append(timed(lambda: [x.host.get_uuid(h) for h in refs]))
            t["possible"].append(timed(lambda: x.VM.get_possible_hosts(vm)))
            t["get_all"].append(timed(lambda: x.host.get_all()))
        x.session.logout()
    finally:
        server.stop()
    return {"ready": ready, "qualifying": len(possible), "load": os.getloadavg(), **t}


def report(title: str, hosts: int, r: dict) -> None:
    mq, mu, mp, mg = (statistics.median(r[k]) for k in ("qualify", "get_uuid", "possible", "get_all"))

    def rounds(values):
        return ", ".join(f"{v * 1000:.0f}" for v in values)

    load = r["load"]
    print(f"== {title}")
    print(f"{hosts} test-driver hosts (1-16 GiB, 1-8 CPUs, 3 guests each); server ready in {r['ready']:.1f} s; "
          f"the VM (2 GiB, one VIF) qualifies on {r['qualifying']} of {hosts}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs)")
    print(f"{hosts} x host.qualify(vm, host): median {mq * 1000:.0f} ms in total ({mq / hosts * 1000:.2f} ms a call); "
          f"baseline {hosts} x host.get_uuid: median {mu * 1000:.0f} ms; ratio {mq / mu:.2f} (lower is better)")
    print(f"  rounds qualify (ms):  {rounds(r['qualify'])}")
    print(f"  rounds get_uuid (ms): {rounds(r['get_uuid'])}")
    print(f"  target: under 500 ms in total: {'met' if mq < 0.5 else 'NOT met'}")
    print(f"VM.get_possible_hosts(vm): median {mp * 1000:.1f} ms; baseline host.get_all: median "
          f"{mg * 1000:.1f} ms; ratio {mp / mg:.2f} (lower is better)")
    print(f"  rounds get_possible_hosts (ms): {', '.join(f'{v * 1000:.1f}' for v in r['possible'])}")
    print(f"  rounds host.get_all (ms):       {', '.join(f'{v * 1000:.1f}' for v in r['get_all'])}")
    print(f"  target: under 500 ms: {'met' if mp < 0.5 else 'NOT met'}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"load average at the start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    report("guests without a CPU definition (the CPU check has nothing to compare)", args.hosts,
           run(args.hosts, args.rounds, guest_cpu=False))
    report("guests with a custom CPU model (one compareHypervisorCPU per host; the test driver "
           "answers unsupported, so it passes)", args.hosts, run(args.hosts, args.rounds, guest_cpu=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
