"""The API reference in docs/, generated from the declarations (run ``python -m xenapi.docgen``).

A test regenerates it and fails when docs/api-reference.md is stale, so the reference can never
drift from what the server actually accepts.
"""
from __future__ import annotations

import sys
from pathlib import Path

from xenapi.errors import ERRORS
from xenapi.model.declare import MISSING, RW, CTOR

OUT = Path(__file__).resolve().parent.parent / "docs" / "api-reference.md"
_QUAL = {RW: "RW", CTOR: "RO (constructor)"}


def render(registry) -> str:
    lines = ["# xenapi API reference", "",
             "Generated from the class declarations by `python -m xenapi.docgen`; do not edit by hand.",
             "Every class also has the implicit messages `get_record`, `get_all`, `get_all_records`,",
             "`get_all_records_where`, `get_by_uuid` (and `get_by_name_label` where it has a name),",
             "a getter per field, and setters/`add_to_`/`remove_from_`/`add_`/`remove_` for RW fields.",
             "Roles: the least privileged role allowed; every more privileged role is allowed too.", ""]
    for name, decl in sorted(registry.classes.items(), key=lambda kv: kv[0].lower()):
        lines += [f"## {name}", "", decl.doc, "", "| field | type | qualifier | notes |", "|---|---|---|---|"]
        for f in decl.fields:
            note = f.doc + (f" ({f.lifecycle})" if f.lifecycle != "published" else "")
            lines.append(f"| `{f.name}` | {f.type} | {_QUAL.get(f.qualifier, 'RO (runtime)')} | {note} |")
        custom = [m for m in registry.messages.values() if m.cls == name and not m.implicit]
        if custom:
            lines += ["", "| message | parameters | result | least role | async | errors |", "|---|---|---|---|---|---|"]
            for m in sorted(custom, key=lambda m: m.name):
                params = ", ".join(f"{p.type} {p.name}" + ("" if p.default is MISSING else f" = {p.default!r}")
                                   for p in m.params)
                lines.append(f"| `{m.name}` | {params} | {m.result} | {m.roles[-1]} | {'yes' if m.is_async else 'no'} "
                             f"| {', '.join(m.errors)} |")
            lines.append("")
            lines += [f"- `{m.name}`: {m.doc}" for m in sorted(custom, key=lambda m: m.name)]
        lines.append("")
    lines += ["## Errors", "", "| code | parameters | meaning |", "|---|---|---|"]
    lines += [f"| `{e.name}` | {', '.join(e.params)} | {e.doc} |" for e in ERRORS.values()]
    return "\n".join(lines) + "\n"


def main() -> int:
    from classes import REGISTRY
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(render(REGISTRY))
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
