#!/usr/bin/env bash
# scripts/serve.sh [ARGS...] -- THE run command: set up (Debian packages and .venv only; the
# embedded default backend is libvirt's in-process test:///default driver, so no libvirtd is
# started here -- use scripts/libvirtd.sh start for qemu:///system), then run the server.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/setup.sh --runtime-only >&2   # progress on stderr: keep stdout the server's
exec .venv/bin/xenapi serve "$@"
