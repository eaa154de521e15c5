"""Fuzz the wire codecs, the where language and the dispatcher with a million inputs (in process).

The properties and input strategies are tests/fuzzing.py's, the ones CI runs a few hundred of.
Here each target runs in chunks, round robin, until the count is reached; a property that fails is
recorded (crash: an undeclared exception; hang: one input over the time limit; traceback: one
logged or sent to the client; wrong: a wrong answer) and the run goes on.  Inputs that hit a
defect already listed in tests/fuzzing.py's KNOWN_DEFECTS are counted apart.  Target: no findings.

    .venv/bin/python bench/fuzz.py                       # 1,000,000 inputs, every target
    .venv/bin/python bench/fuzz.py --count 20000 --targets dispatch,where --time-limit 5

Findings go to a JSON-lines file (``--out``, by default in a new temp directory), one line each:
target, kind, detail, the input (repr, cut at 4 KiB) and the traceback; the summary at the end
(and on Ctrl-C) lists each distinct finding once with its count.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import given, settings  # noqa: E402  (after the path)
from hypothesis import strategies as st  # noqa: E402

from classes import REGISTRY  # noqa: E402
from tests import fuzzing as F  # noqa: E402
from xenapi.wire import Limits  # noqa: E402

SMALL = Limits(max_body_bytes=4096, max_depth=8, max_items=64)


_SPICE = [b"<", b">", b"&", b'"', b"'", b"\xff", b"\x00", b"\xc3", b"\xed\xa0\x80", b"{", b"}", b"[", b"]", b",",
          b":", b"\\", b"\\u", b"&#", b";", b"<!", b"<?", b"]]>", b"9" * 400, b"\r\n", b"\xef\xbb\xbf", b"<value>",
          b"</value>", b"<array><data>", b"<struct><member>", b"1e999", b"-"]


def mutants(data, rng, n: int):
    """``n`` small edits of ``data`` (bytes or str): a byte changed, inserted (often markup or an
    escape), a span deleted or doubled, the end cut off.  Cheap inputs near a structured one."""
    text = isinstance(data, str)
    base = data.encode("utf-8", "surrogatepass") if text else data
    out = []
    for _ in range(n):
        b = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            at = rng.randint(0, len(b))
            op = rng.randrange(5)
            if op == 0 and b:
                b[min(at, len(b) - 1)] = rng.randrange(256)
            elif op == 1:
                b[at:at] = rng.choice(_SPICE) if rng.random() < 0.7 else bytes([rng.randrange(256)])
            elif op == 2:
                del b[at:at + rng.randint(1, 16)]
            elif op == 3:
                b[at:at] = b[at:at + rng.randint(1, 32)]
            else:
                del b[at:]
        out.append(bytes(b).decode("utf-8", "surrogateescape") if text else bytes(b))
    return out


def amplified(check, n: int):
    """``check`` of an input, then of ``n`` mutants of it (of the input's first item, when it is a
    tuple), each within the time limit."""
    import random

    def run(value, count, limit):
        with F.time_limit(limit):
            check(value)
        count(1)
        doc, rest = (value[0], value[1:]) if isinstance(value, tuple) else (value, ())
        for m in mutants(doc, random.Random(hash(doc)), n):
            with F.time_limit(limit):
                check((m, *rest) if rest else m)
            count(1)
    return run


def _targets(harness_box, n: int):
    """name -> (strategy, check(input)).  Dispatcher inputs need the live harness."""
    return {
        "xmlrpc.decode(bytes)": (st.binary(max_size=2000), amplified(F.check_xml_decode, n)),
        "xmlrpc.decode(documents)": (st.tuples(F.xml_documents(), st.sampled_from([Limits(), SMALL])),
                                     amplified(lambda a: F.check_xml_decode(*a), n)),
        "xmlrpc.roundtrip": (F.wire_values, F.check_xml_roundtrip),
        "xmlrpc.encode": (F.outcomes, F.check_xml_encode_never_raises),
        "jsonrpc.decode(bytes)": (st.binary(max_size=2000), amplified(F.check_json_decode, n)),
        "jsonrpc.decode(documents)": (st.tuples(F.json_documents(), st.sampled_from([Limits(), SMALL])),
                                      amplified(lambda a: F.check_json_decode(*a), n)),
        "jsonrpc.roundtrip": (st.tuples(F.wire_values, st.lists(F.json_values, max_size=4)),
                              lambda a: F.check_json_roundtrip(*a)),
        "jsonrpc.encode": (st.tuples(F.outcomes, st.sampled_from(["jsonrpc1", "jsonrpc2"])),
                           lambda a: F.check_json_encode_never_raises(*a)),
        "where": (st.tuples(F.where_texts(), st.lists(F.store_records(REGISTRY), max_size=3),
                            st.one_of(st.none(), st.just("OpaqueRef:x"))),
                  amplified(lambda a: F.check_where(*a), n)),
        "dispatch": (st.data(), lambda data: F.check_dispatch(harness_box[0], data.draw(
            F.dispatcher_calls(harness_box[0])), harness_box[1])),
    }


class Run:
    def __init__(self, out: Path, time_limit: float):
        self.out = out
        self.time_limit = time_limit
        self.inputs = Counter()
        self.findings = Counter()
        self.first = {}
        self.errors = Counter()           # the harness itself failing (hypothesis, setup)
        self.seconds = Counter()
        self.started = time.monotonic()

    def record(self, target: str, finding: F.Finding | None, exc: BaseException, data) -> None:
        kind = finding.kind if finding else "crash"
        detail = finding.detail if finding else f"{type(exc).__name__}: {exc}"
        key = (target, kind, detail[:160])
        self.findings[key] += 1
        if self.findings[key] <= 3:       # the first three of each kind in full
            with self.out.open("a") as f:
                f.write(json.dumps({"target": target, "kind": kind, "detail": detail,
                                    "input": repr(data)[:4096],
                                    "traceback": "".join(traceback.format_exception(exc))[-8000:]}) + "\n")
        self.first.setdefault(key, repr(data)[:300])

    def summary(self, total: int) -> str:
        elapsed = time.monotonic() - self.started
        n = sum(self.inputs.values())
        lines = [f"fuzz: {n:,} of {total:,} inputs in {elapsed:,.0f} s ({n / max(elapsed, 1e-9):,.0f}/s)"]
        lines += [f"  {name:28} {count:>10,} inputs {self.seconds[name]:>8,.0f} s"
                  for name, count in sorted(self.inputs.items())]
        lines.append(f"known defects (tests/fuzzing.py KNOWN_DEFECTS), inputs that hit each: "
                     f"{dict(F.TALLY.known) or 'none'}")
        if self.errors:
            lines.append(f"harness errors: {dict(self.errors)}")
        if not self.findings:
            lines.append("findings: none (target: none)")
        else:
            lines.append(f"findings: {sum(self.findings.values()):,} inputs, {len(self.findings)} distinct "
                         f"(details in {self.out}):")
            for (target, kind, detail), count in self.findings.most_common():
                lines.append(f"  {count:>7,} {kind:9} {target}: {detail}")
                lines.append(f"          e.g. {self.first[(target, kind, detail)]}")
        return "\n".join(lines)


def amp(check, n: int) -> int:
    return n if getattr(check, "__name__", "") == "run" else 0


def chunk(run: Run, name: str, strategy, check, size: int, limit: float) -> None:
    """One hypothesis run of ``size`` inputs; every finding recorded, none raised."""

    def count(k):
        run.inputs[name] += k

    @settings(settings.get_profile("xenapi-bench"), max_examples=size)
    @given(strategy)
    def each(value):
        try:
            if amp(check, 1):                                          # amplified: counts and limits each
                check(value, count, limit)
            else:
                count(1)
                with F.time_limit(limit if name != "dispatch" else 0):     # check_dispatch keeps its own
                    check(value)
        except F.Finding as e:
            run.record(name, e, e, e.data if e.data is not None else value)
        except F.Hang as e:
            run.record(name, F.Finding("hang", name, f"over {limit} s"), e, value)
        except Exception as e:           # noqa: BLE001 - a check itself failing is a finding too
            run.record(name, None, e, value)

    try:
        each()
    except Exception as e:               # noqa: BLE001 - hypothesis refusing to go on
        run.errors[f"{name}: {type(e).__name__}"] += 1
        print(f"harness error in {name}: {type(e).__name__}: {str(e)[:300]}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="inputs in all (default 1,000,000)")
    parser.add_argument("--chunk", type=int, default=2000, help="inputs per hypothesis run (default 2000)")
    parser.add_argument("--time-limit", type=float, default=10.0, help="seconds one input may take (default 10)")
    parser.add_argument("--targets", default="", help="comma-separated target names or prefixes (default: all)")
    parser.add_argument("--mutants", type=int, default=9,
                        help="byte-level mutants checked after each generated document or expression (default 9)")
    parser.add_argument("--restart-every", type=int, default=50_000,
                        help="dispatcher inputs before a fresh server (default 50,000)")
    parser.add_argument("--out", type=Path, help="findings file (JSON lines; default: in a temp directory)")
    args = parser.parse_args()

    logging.getLogger().addHandler(logging.NullHandler())     # the server's log lines are not the output
    work = Path(tempfile.mkdtemp(prefix="xenapi-fuzz-"))
    out = args.out or work / "findings.jsonl"
    harness_box = [None, args.time_limit]
    targets = _targets(harness_box, args.mutants)
    if args.targets:
        wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
        targets = {k: v for k, v in targets.items() if any(k.startswith(w) for w in wanted)}
    if not targets:
        parser.error("no such target")
    run = Run(out, args.time_limit)
    share = {name: args.count // len(targets) + (1 if i < args.count % len(targets) else 0)
             for i, name in enumerate(targets)}
    print(f"fuzz: {args.count:,} inputs over {len(targets)} targets, {args.time_limit:g} s per input; "
          f"findings to {out}", flush=True)

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    served = 0
    last_report = time.monotonic()
    try:
        while not stop and any(run.inputs[n] < share[n] for n in targets):
            for name, (strategy, check) in targets.items():
                left = share[name] - run.inputs[name]
                if left <= 0 or stop:
                    continue
                if name == "dispatch" and (harness_box[0] is None or served >= args.restart_every):
                    if harness_box[0] is not None:
                        F.stop_harness(harness_box[0])
                    harness_box[0] = F.start_harness(work / f"server-{run.inputs[name]}")
                    served = 0
                before = run.inputs[name]
                hangs = sum(c for k, c in run.findings.items() if k[0] == name and k[1] == "hang")
                t0 = time.monotonic()
                chunk(run, name, strategy, check, min(args.chunk, max(1, left // (1 + amp(check, args.mutants)))),
                      args.time_limit)
                run.seconds[name] += time.monotonic() - t0
                if run.inputs[name] == before:           # hypothesis found nothing more to try
                    share[name] = run.inputs[name]
                if name == "dispatch":
                    served += run.inputs[name] - before
                    if sum(c for k, c in run.findings.items() if k[0] == name and k[1] == "hang") > hangs:
                        served = args.restart_every      # a hang may leave the server stuck: a fresh one
            if time.monotonic() - last_report > 300:
                print(run.summary(args.count), flush=True)
                last_report = time.monotonic()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        if harness_box[0] is not None:
            F.stop_harness(harness_box[0])
    print(run.summary(args.count), flush=True)
    return 1 if run.findings else 0


if __name__ == "__main__":
    sys.exit(main())
