#!/usr/bin/env bash
# scripts/libvirtd.sh start|stop [--destroy-domains]|status
#
# A real libvirtd (monolithic daemon, QEMU driver) for the test suite, started as root
# without systemd (Debian 12: libvirt-daemon + libvirt-daemon-driver-qemu, without
# libvirt-daemon-system). After `start`, qemu:///system answers.
#
#   start   idempotent: if qemu:///system already answers (ours, or a libvirtd someone else
#           runs) nothing is done. Otherwise: /etc/libvirt/qemu.conf is set up (see
#           ensure_qemu_conf), the libvirt-qemu system user is created if missing (see
#           ensure_qemu_user), then virtlogd and libvirtd are started under a child subreaper.
#   stop    stops exactly what `start` started, by the PIDs in the pid files (checked: alive
#           and the right command name). Running guests are left running (libvirtd reconnects
#           to them on its next start), unless --destroy-domains is given.
#   status  what runs, exit 0 if qemu:///system answers.
#
# Why a subreaper: libvirtd double-forks QEMU, so an exited QEMU's parent is PID 1, which in
# this sandbox reaps orphans only every ~1.5 s; libvirt polls kill(pid, 0) (true for a zombie)
# on every destroy/migration and so waits ~1.5 s each time. A tiny perl process with
# prctl(PR_SET_CHILD_SUBREAPER) as the daemons' parent reaps QEMU at once (see shared/lab/lab.md,
# gotcha 1). It exits by itself when it has no children left.
#
# Environment: XENAPI_LIBVIRTD_STATE (default /run/xenapi-test-libvirtd): pid files, our
# libvirtd.conf, startup log. Daemon logs: /var/log/libvirt/{libvirtd,virtlogd}.log, guests'
# QEMU logs: /var/log/libvirt/qemu/NAME.log.
set -euo pipefail

STATE=${XENAPI_LIBVIRTD_STATE:-/run/xenapi-test-libvirtd}
URI=qemu:///system
QEMU_CONF=/etc/libvirt/qemu.conf
MARK="# managed by xenapi scripts/libvirtd.sh"

log()  { printf '[libvirtd.sh] %s\n' "$*" >&2; }
die()  { log "ERROR: $*"; exit 1; }
now_ms() { date +%s%3N; }

alive() { [[ "$1" =~ ^[0-9]+$ ]] && [[ -d /proc/$1 ]] && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]; }
pid_of() { cat "$STATE/$1.pid" 2>/dev/null || true; }
# ours NAME COMM: the PID recorded for NAME is alive and runs COMM
ours() {
  local pid; pid=$(pid_of "$1")
  alive "$pid" && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]]
}
answering() { timeout 10 virsh -q -c "$URI" uri >/dev/null 2>&1; }

# The settings the lab found necessary (shared/lab/README.md): without
# libvirt-daemon-system there is no qemu.conf and no libvirt-qemu user, and the QEMU driver
# fails to initialise ("Failed to parse user 'libvirt-qemu'").
qemu_conf_content() {
  cat <<EOF
$MARK (test daemon).
# Remove the line above to manage this file yourself; the script then leaves it alone.
user = "root"
group = "root"
security_driver = "none"
dynamic_ownership = 0
remember_owner = 0
EOF
}

ensure_qemu_conf() {
  mkdir -p /etc/libvirt
  local want; want=$(qemu_conf_content)
  if [[ ! -e $QEMU_CONF ]]; then
    printf '%s\n' "$want" >"$QEMU_CONF"; log "wrote $QEMU_CONF"; return
  fi
  if head -n1 "$QEMU_CONF" | grep -qF "$MARK"; then
    if [[ "$(cat "$QEMU_CONF")" != "$want" ]]; then
      printf '%s\n' "$want" >"$QEMU_CONF"; log "updated $QEMU_CONF"
    fi
    return
  fi
  # Someone else's file. If it names a user, or the libvirt-qemu user that the default
  # config needs exists (libvirt-daemon-system is installed), it is a working config: keep it.
  if grep -Eq '^[[:space:]]*user[[:space:]]*=' "$QEMU_CONF" || getent passwd libvirt-qemu >/dev/null; then
    log "keeping the existing $QEMU_CONF (not written by this script)"
    return
  fi
  local bak; bak="$QEMU_CONF.bak-xenapi-$(date +%Y%m%d%H%M%S)"
  cp -a "$QEMU_CONF" "$bak"
  # comment out the keys we set (libvirt would take the first occurrence), then append ours
  sed -Ei 's/^([[:space:]]*(user|group|security_driver|dynamic_ownership|remember_owner)[[:space:]]*=)/# (xenapi) \1/' "$QEMU_CONF"
  { echo; echo "# added by xenapi scripts/libvirtd.sh for its test daemon (previous file: $bak)"
    qemu_conf_content | sed 1,2d; } >>"$QEMU_CONF"
  log "added root/no-security-driver settings to $QEMU_CONF (backup: $bak)"
}

# libvirt 9.0's privileged QEMU driver looks up its built-in user and group (libvirt-qemu)
# before it reads qemu.conf (seen with strace: /etc/passwd is read, qemu.conf never is), so
# user = "root" in qemu.conf alone does not help: "Failed to parse user 'libvirt-qemu'".
# Create them as libvirt-daemon-system's postinst does (system user in group kvm, plus group
# libvirt-qemu). QEMU still runs as root, per qemu.conf.
ensure_qemu_user() {
  getent group kvm >/dev/null || groupadd --system kvm
  if ! getent passwd libvirt-qemu >/dev/null; then
    useradd --system --gid kvm --home-dir /var/lib/libvirt --no-create-home \
      --shell /usr/sbin/nologin --comment "Libvirt Qemu" libvirt-qemu
    log "created system user libvirt-qemu (needed by libvirtd's QEMU driver to initialise)"
  fi
  getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
  id -nG libvirt-qemu | tr ' ' '\n' | grep -qx libvirt-qemu || usermod -a -G libvirt-qemu libvirt-qemu
}

write_libvirtd_conf() {
  {
    echo "# written by xenapi scripts/libvirtd.sh start (passed with -f; /etc/libvirt/libvirtd.conf is not used)"
    echo 'unix_sock_rw_perms = "0700"'       # root only, as the default
    echo 'auth_unix_rw = "none"'             # no polkit / D-Bus here
    echo 'auth_unix_ro = "none"'
    echo 'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"'
    # a stable host UUID across restarts (the sandbox has no SMBIOS, so it would be random)
    [[ -s /etc/machine-id ]] && echo 'host_uuid_source = "machine-id"'
  } >"$STATE/libvirtd.conf"
  echo 'log_outputs = "3:file:/var/log/libvirt/virtlogd.log"' >"$STATE/virtlogd.conf"
}

REAPER_PL='
use strict; use warnings; use POSIX ();
my ($pidfile, @cmd) = @ARGV;
my %nr = (x86_64 => 157, aarch64 => 167);                  # SYS_prctl
my $n = $nr{(POSIX::uname())[4]};
if (!defined $n or syscall($n, 36, 1, 0, 0, 0) != 0) {     # PR_SET_CHILD_SUBREAPER
    warn "reaper: prctl(PR_SET_CHILD_SUBREAPER) unavailable: $!\n";
}
open(my $fh, ">", $pidfile) or die "$pidfile: $!"; print $fh "$$\n"; close $fh;
my $c = fork() // die "fork: $!";
if (!$c) { exec(@cmd) or die "exec @cmd: $!"; }
1 while wait() != -1;                  # until no child/orphan is left
unlink $pidfile;
'

stop_pid() {   # TERM, up to 10 s, then KILL
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do alive "$pid" || return 0; sleep 0.1; done
  log "pid $pid did not exit on TERM: KILL"
  kill -KILL "$pid" 2>/dev/null || true
}

stop_daemons() {   # stop_daemons [quiet]
  local p pid i
  for p in libvirtd virtlogd; do
    pid=$(pid_of "$p")
    if ours "$p" "$p"; then
      stop_pid "$pid"; [[ -n "${1:-}" ]] || log "stopped $p (pid $pid)"
    fi
    rm -f "$STATE/$p.pid"
  done
  pid=$(pid_of reaper)
  if ours reaper perl; then
    for i in $(seq 1 20); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
      [[ -n "${1:-}" ]] || log "reaper (pid $pid) stays while guests' QEMU processes run; it exits after them"
    fi
  fi
}

cmd_start() {
  local t0 i; t0=$(now_ms)
  [[ $EUID -eq 0 ]] || die "must run as root (a privileged libvirtd for qemu:///system)"
  for c in virsh libvirtd virtlogd qemu-system-x86_64 perl setsid flock timeout useradd groupadd; do
    command -v "$c" >/dev/null || die "missing $c (run scripts/setup.sh)"
  done
  if answering; then
    if ours libvirtd libvirtd; then log "already running (libvirtd pid $(pid_of libvirtd))"
    else log "$URI already answers (a libvirtd not started by this script; left alone)"; fi
    return 0
  fi
  stop_daemons quiet                  # half-started or hung leftovers of ours, if any
  ensure_qemu_conf
  ensure_qemu_user
  mkdir -p /var/log/libvirt/qemu /run/libvirt /var/lib/libvirt /var/cache/libvirt
  write_libvirtd_conf
  rm -f "$STATE"/{libvirtd,virtlogd,reaper}.pid
  # setsid + reaper; stdio to a file and the lock fd closed, so no caller's pipe is held open
  setsid perl -e "$REAPER_PL" "$STATE/reaper.pid" /bin/sh -c \
    'virtlogd -d -p "$1/virtlogd.pid" -f "$1/virtlogd.conf" && exec libvirtd -d -p "$1/libvirtd.pid" -f "$1/libvirtd.conf"' \
    sh "$STATE" </dev/null >>"$STATE/startup.log" 2>&1 9<&- &
  for i in $(seq 1 300); do
    answering && break
    # libvirtd writes its pid file early and exits if a driver fails to initialise: stop waiting
    (( i > 30 )) && ! ours libvirtd libvirtd && break
    sleep 0.1
  done
  if ! answering; then
    tail -n 20 "$STATE/startup.log" >&2 2>/dev/null || true
    tail -n 30 /var/log/libvirt/libvirtd.log >&2 2>/dev/null || true
    die "libvirtd did not come up (logs above: $STATE/startup.log, /var/log/libvirt/libvirtd.log)"
  fi
  local t1; t1=$(now_ms)
  # QEMU capabilities are probed lazily (~0.6 s); do it now, not in the first test
  timeout 60 virsh -q -c "$URI" domcapabilities --virttype qemu >/dev/null 2>&1 ||
    log "warning: domcapabilities failed (see /var/log/libvirt/libvirtd.log)"
  log "started: libvirtd pid $(pid_of libvirtd), virtlogd pid $(pid_of virtlogd), reaper pid $(pid_of reaper);" \
      "answering after $((t1 - t0)) ms, ready (QEMU capabilities probed) after $(( $(now_ms) - t0 )) ms"
}

cmd_stop() {
  [[ $EUID -eq 0 ]] || die "must run as root"
  if [[ "${1:-}" == --destroy-domains ]] && ours libvirtd libvirtd && answering; then
    local dom
    for dom in $(virsh -q -c "$URI" list --name 2>/dev/null); do
      virsh -q -c "$URI" destroy "$dom" >/dev/null 2>&1 && log "destroyed domain $dom" || true
    done
  fi
  if ! ours libvirtd libvirtd && ! ours virtlogd virtlogd; then
    log "not running (nothing started by this script)"
  fi
  stop_daemons
}

cmd_status() {
  local p
  for p in libvirtd virtlogd reaper; do
    if ours "$p" "$([[ $p == reaper ]] && echo perl || echo "$p")"; then echo "$p: running, pid $(pid_of "$p")"
    else echo "$p: not running (from this script)"; fi
  done
  if answering; then echo "$URI: answering"; virsh -q -c "$URI" list --all 2>/dev/null | sed 's/^/  /'; return 0; fi
  echo "$URI: not answering"; return 1
}

mkdir -p "$STATE"
case "${1:-}" in
  start|stop)
    # serialize start/stop (also across concurrent test runs)
    exec 9>"$STATE/lock"; flock -w 120 9 || die "another scripts/libvirtd.sh holds $STATE/lock" ;;
esac
case "${1:-}" in
  start)  cmd_start ;;
  stop)   shift; cmd_stop "$@" ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop [--destroy-domains]|status" >&2; exit 2 ;;
esac
