"""What tests that make network namespaces and veths share: a checked command, and a private /24
claimed for the test (routed unreachable in the root namespace, so a stray packet fails at once
and two runs never take the same prefix)."""
from __future__ import annotations

import os
import subprocess


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def claim_prefix(second: int) -> int:
    """N of a 10.<second>.N.0/24 no one else routes now, routed ``unreachable`` in the root
    namespace (concurrent runs, or a run killed before its clean-up, hold other N)."""
    for _attempt in range(20):
        octet = int.from_bytes(os.urandom(1), "big") % 250 + 1
        if sh("ip", "route", "add", "unreachable", f"10.{second}.{octet}.0/24", check=False).returncode == 0:
            return octet
    raise RuntimeError(f"no free 10.{second}.N.0/24 prefix")
