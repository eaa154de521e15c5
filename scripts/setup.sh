#!/usr/bin/env bash
# scripts/setup.sh [--runtime-only] -- idempotent set-up of a Debian 12 machine for xenapi.
#
#   1. Debian packages (apt-get update only when a package is missing, then apt-get install -y)
#   2. .venv at the repo root, with `pip install -e '.[test]'` (skipped while pyproject.toml
#      and the Python are unchanged and the key modules import)
#   3. the npm client `xen-api` in tests/e2e/node (npm ci from the committed lock file; skipped
#      while the lock file is unchanged)
#   4. the tiny test guest's Debian packages in .cache/guest/debs (tests/e2e/guest.py download)
#
# --runtime-only: steps 1 and 2 only (what `scripts/serve.sh` needs).
# Runs as root for step 1 (a non-root run works if nothing is missing). Needs no stdin.
# Environment: XENAPI_PYTHON=/path/to/python3 to choose the Python that creates .venv.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RUNTIME_ONLY=0
for a in "$@"; do
  case "$a" in
    --runtime-only) RUNTIME_ONLY=1 ;;
    *) echo "usage: $0 [--runtime-only]" >&2; exit 2 ;;
  esac
done

export DEBIAN_FRONTEND=noninteractive PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
  npm_config_yes=true npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false

now_ms() { date +%s%3N; }
T0=$(now_ms); TS=$T0
step() { local t; t=$(now_ms); printf '[setup] %-8s %s (%d.%01d s)\n' "$1" "$2" $(( (t - TS) / 1000 )) $(( (t - TS) % 1000 / 100 )); TS=$t; }
die() { echo "[setup] ERROR: $*" >&2; exit 1; }

# one set-up at a time (concurrent test runs share .venv and the caches)
mkdir -p .cache
exec 8>.cache/setup.lock
flock -w 900 8 || die "another scripts/setup.sh holds .cache/setup.lock"

# ------------------------------------------------------------------ python choice ---
py_ok() {   # py_ok PYTHON: >= 3.11 with venv + ensurepip
  "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}
VENV_PY=.venv/bin/python
PY=""
if [[ -x $VENV_PY ]] && "$VENV_PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  PY=$VENV_PY     # existing, working venv
else
  for c in ${XENAPI_PYTHON:-} python3 python3.12 python3.11 /usr/bin/python3; do
    p=$(command -v "$c" 2>/dev/null) || continue
    if py_ok "$p"; then PY=$p; break; fi
  done
fi
# Debian's python needs its venv and headers packages (libvirt-python is built from source)
DEB_PY=0
if [[ -z $PY || $PY == /usr/bin/* ]]; then DEB_PY=1; fi

# ------------------------------------------------------------------ 1. Debian packages ---
PKGS=(libvirt-dev pkg-config libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-driver-lxc
      libvirt-clients qemu-system-x86 qemu-utils libxml2-utils openssh-server openssh-client
      gcc libc6-dev ca-certificates openssl
      tgt libvirt-daemon-driver-storage-iscsi-direct qemu-block-extra
      dnsmasq-base ebtables iptables libvirt-daemon-config-nwfilter iputils-ping
      pxelinux syslinux-common ipxe-qemu syslinux mtools swtpm swtpm-tools)
(( DEB_PY )) && PKGS+=(python3-venv python3-dev)
PKGS+=(python3)            # tests run helpers as another uid with /usr/bin/python3
# node 20 + npm come with the machine image (outside Debian's archive); Debian's are the fallback
if (( ! RUNTIME_ONLY )) && ! { command -v node && command -v npm; } >/dev/null 2>&1; then
  PKGS+=(nodejs npm)
fi
missing=()
for p in "${PKGS[@]}"; do
  [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null)" == "ii "* ]] || missing+=("$p")
done
if (( ${#missing[@]} )); then
  [[ $EUID -eq 0 ]] || die "missing Debian packages (${missing[*]}); run as root"
  echo "[setup] apt      installing: ${missing[*]}"
  apt-get update -q >/dev/null || apt-get update
  apt-get install -y -q "${missing[@]}" </dev/null >.cache/apt-install.log 2>&1 ||
    { tail -n 30 .cache/apt-install.log >&2; die "apt-get install failed (log: .cache/apt-install.log)"; }
  step apt "installed ${#missing[@]} package(s)"
else
  step apt "all ${#PKGS[@]} packages present"
fi

# ------------------------------------------------------------------ 2. .venv ---
if [[ -z $PY ]]; then
  for c in /usr/bin/python3 python3; do
    p=$(command -v "$c" 2>/dev/null) || continue
    if py_ok "$p"; then PY=$p; break; fi
  done
  [[ -n $PY ]] || die "no Python >= 3.11 with venv found"
fi
if [[ $PY != "$VENV_PY" ]]; then
  rm -rf .venv
  "$PY" -m venv .venv
  step venv "created .venv with $("$VENV_PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
fi
STAMP=.venv/.xenapi-setup-stamp
want=$( { sha256sum pyproject.toml; "$VENV_PY" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
# (find_spec, not import: the project itself may be mid-edit and fail to import)
if [[ "$want" == "$have" ]] && "$VENV_PY" -c 'import importlib.util as u, sys
sys.exit(not all(u.find_spec(m) for m in ("libvirt", "pytest", "ansible", "xenapi", "XenAPI")))' >/dev/null 2>&1; then
  step venv "up to date"
else
  rm -f "$STAMP"
  echo "[setup] venv     pip install -e '.[test]' (libvirt-python builds from source, ~10 s)"
  if ! "$VENV_PY" -m pip install -q -e '.[test]' </dev/null >.cache/pip-install.log 2>&1; then
    tail -n 40 .cache/pip-install.log >&2
    die "pip install -e '.[test]' failed (log: .cache/pip-install.log)"
  fi
  echo "$want" >"$STAMP"
  step venv "installed the project and its test extras"
fi
# The Xen-API Python client (PyPI "XenAPI") must be the real one: the tests drive it.
"$VENV_PY" -c 'import XenAPI' >/dev/null 2>&1 ||
  die "the XenAPI client is not importable in .venv (see .cache/pip-install.log)"
# Byte-compile the project (about 0.4 s): an editable install compiles none of it, and where
# PYTHONDONTWRITEBYTECODE is set every start compiles ~180 modules again, 0.2 s of the server's
# first answer.  A file edited later is simply compiled in memory: Python checks each .pyc
# against its source.
"$VENV_PY" -m compileall -q -j 0 xenapi classes auth storage >/dev/null ||
  echo "[setup] venv     byte-compiling the project failed (see: $VENV_PY -m compileall xenapi classes auth storage)" >&2

# ------------------------------------------------------------------ 3. npm client ---
if (( ! RUNTIME_ONLY )); then
  NODE_DIR=tests/e2e/node
  NSTAMP=$NODE_DIR/node_modules/.xenapi-setup-stamp
  nhash() { cat "$NODE_DIR/package.json" "$NODE_DIR/package-lock.json" 2>/dev/null | sha256sum | cut -d' ' -f1 || true; }
  nwant=$(nhash)
  if [[ -f $NODE_DIR/node_modules/xen-api/package.json && "$(cat "$NSTAMP" 2>/dev/null)" == "$nwant" ]]; then
    step npm "xen-api up to date"
  else
    if [[ -f $NODE_DIR/package-lock.json ]]; then ncmd=ci; else ncmd=install; fi
    echo "[setup] npm      npm $ncmd in $NODE_DIR"
    if ! (cd "$NODE_DIR" && npm "$ncmd" --no-audit --no-fund --loglevel=error) </dev/null >.cache/npm-install.log 2>&1; then
      tail -n 30 .cache/npm-install.log >&2
      die "npm $ncmd failed (log: .cache/npm-install.log)"
    fi
    # the lock file may have been (re)written by npm install: hash after
    nwant=$(nhash)
    echo "$nwant" >"$NSTAMP"
    step npm "installed xen-api $(cd "$NODE_DIR" && node -p 'JSON.parse(require("fs").readFileSync("node_modules/xen-api/package.json")).version')"
  fi

# ------------------------------------------------------------------ 4. guest packages ---
  if out=$("$VENV_PY" tests/e2e/guest.py download 2>&1); then
    step guest "${out##*$'\n'}"
  else
    echo "$out" >&2; die "downloading the test guest's packages failed"
  fi
fi
t=$(now_ms); printf '[setup] done in %d.%01d s\n' $(( (t - T0) / 1000 )) $(( (t - T0) % 1000 / 100 ))
