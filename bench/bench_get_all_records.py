"""VM.get_all_records for 1,000 VMs end to end through the official XenAPI client, against
libvirt-python listing the same 1,000 domains (listAllDomains, then info() and XMLDesc() of each)
through a libvirtd socket (test+unix:///default on a private daemon).

    .venv/bin/python bench/bench_get_all_records.py [--rounds 5] [--vms 1000]
Target: ratio (xenapi time / libvirt time) at most 1.0.
"""
from __future__ import annotations

import argparse
import re
import sys
import time

from common import PASSWORD, XenapiServer, compare, node_xml

import libvirt
import XenAPI

from tests.private_libvirtd import PrivateLibvirtd


def time_xenapi(url: str) -> float:
    session = XenAPI.Session(url)
    session.xenapi.login_with_password("root", PASSWORD, "2.21", "bench")
    start = time.perf_counter()
    records = session.xenapi.VM.get_all_records()
    elapsed = time.perf_counter() - start
    session.xenapi.session.logout()
    assert len(records) > 1
    return elapsed * 1000


def time_libvirt(uri: str) -> float:
    conn = libvirt.open(uri)
    start = time.perf_counter()
    for dom in conn.listAllDomains():
        dom.info()
        dom.XMLDesc(0)
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed * 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--vms", type=int, default=1000)
    args = parser.parse_args()
    node = node_xml(args.vms, args.vms // 2)
    ours = XenapiServer(node)
    daemon = PrivateLibvirtd()
    daemon.start()
    try:
        conn = libvirt.open(daemon.uri)
        for dom in conn.listAllDomains():         # the daemon's default test domain
            dom.destroy()
            dom.undefine()
        for n, xml in enumerate(re.findall(r"<domain .*?</domain>", node, re.S)):
            dom = conn.defineXML(xml.replace("<test:runstate>5</test:runstate>", ""))
            if n < args.vms // 2:
                dom.create()
        conn.close()
        compare(f"list {args.vms} VMs", args.rounds, lambda: time_xenapi(ours.url),
                lambda: time_libvirt(daemon.uri), "ms", higher_is_better=False, target=1.0)
    finally:
        daemon.remove()
        ours.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
