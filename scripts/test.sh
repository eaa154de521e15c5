#!/usr/bin/env bash
# scripts/test.sh [PYTEST ARGS...] -- THE test command.
#   1. scripts/setup.sh          (Debian packages, .venv, npm client, guest packages; fast when done)
#   2. scripts/libvirtd.sh start (a real libvirtd for qemu:///system; nothing if it answers)
#   3. .venv/bin/python -m pytest "$@"   (default: the whole suite, tests/)
# Exits with pytest's status. Under CI (CI=true) the libvirtd that step 2 started is stopped at
# the end; elsewhere it is left running for the next run (and for other sessions using it).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

bash scripts/setup.sh

started_here=0
bash scripts/libvirtd.sh status >/dev/null 2>&1 || started_here=1
if ! bash scripts/libvirtd.sh start; then
  # the e2e fixtures fail loudly with the reason; the other tests can still run
  echo "[test] WARNING: scripts/libvirtd.sh start failed; the e2e tests will fail" >&2
fi
if [[ "${CI:-}" == true && $started_here == 1 ]]; then
  trap 'bash scripts/libvirtd.sh stop --destroy-domains || true' EXIT
fi

(( $# )) || set -- tests/
rc=0
.venv/bin/python -m pytest "$@" </dev/null || rc=$?
exit "$rc"
