#!/usr/bin/env bash
# Install the system packages the tests need (promtool, Prometheus, Pushgateway, Chromium + driver), as root.
# Idempotent and non-interactive: installs only what is missing, and leaves no Debian daemon running that the
# install started (the tests start their own servers on free ports).
set -euo pipefail

PACKAGES=(prometheus prometheus-pushgateway chromium chromium-driver)
# Daemons the Debian packages may start from their postinst scripts.
DAEMONS=(prometheus prometheus-pushgateway prometheus-node-exporter)

die() { echo "install-system-deps: $*" >&2; exit 1; }
log() { echo "install-system-deps: $*"; }

# Process ids running /usr/bin/<name>: exact, unlike pgrep -x (process names are cut to 15 characters).
pids_of() {
  local p
  for p in /proc/[0-9]*; do
    if [ "$(readlink "$p/exe" 2>/dev/null)" = "/usr/bin/$1" ]; then echo "${p#/proc/}"; fi
  done
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

if [ "$(id -u)" -ne 0 ]; then
  die "must run as root (try: sudo $0)"
fi
command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script supports Debian/Ubuntu only"

missing=()
for pkg in "${PACKAGES[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done
if [ "${#missing[@]}" -eq 0 ] && command -v promtool >/dev/null 2>&1; then
  log "all present: ${PACKAGES[*]}"
  exit 0
fi
if ! command -v promtool >/dev/null 2>&1 && installed prometheus; then
  die "package prometheus is installed but promtool is not on PATH"
fi

# Daemons already running before the install are someone else's: never stop those.
before=" $(for d in "${DAEMONS[@]}"; do pids_of "$d"; done | tr '\n' ' ') "
has_systemd=0
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then has_systemd=1; fi
active_before=" "
if [ "$has_systemd" -eq 1 ]; then
  for d in "${DAEMONS[@]}"; do
    if systemctl is-active --quiet "$d"; then active_before+="$d "; fi
  done
fi

# Keep postinst scripts from starting services where policy-rc.d is honoured (invoke-rc.d / deb-systemd-invoke).
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
  own_policy=1
fi
cleanup() { if [ "$own_policy" -eq 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
log "installing: ${missing[*]}"
apt-get update -q || die "apt-get update failed"
apt-get install -y -q --no-install-recommends "${missing[@]}" || die "apt-get install ${missing[*]} failed"

# Stop what the install started (systemctl is usually absent in containers; where present, stop and disable).
if [ "$has_systemd" -eq 1 ]; then
  for d in "${DAEMONS[@]}"; do
    case "$active_before" in *" $d "*) continue ;; esac
    systemctl disable --now "$d" >/dev/null 2>&1 || true
  done
fi
started=()
for d in "${DAEMONS[@]}"; do
  for pid in $(pids_of "$d"); do
    case "$before" in *" $pid "*) continue ;; esac
    log "stopping $d (pid $pid), started by the install"
    kill "$pid" 2>/dev/null || true
    started+=("$pid")
  done
done
for pid in "${started[@]}"; do
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then die "could not stop pid $pid"; fi
done

for pkg in "${PACKAGES[@]}"; do
  installed "$pkg" || die "$pkg is still not installed"
done
command -v promtool >/dev/null 2>&1 || die "promtool missing after installing prometheus"
log "done: $(promtool --version 2>&1 | head -n1)"
