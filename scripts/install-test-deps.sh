#!/usr/bin/env bash
# Installs the system programs the tests run for real (dockerd, Prometheus, Alertmanager, a registry,
# mmdebstrap; openssl for TLS test certificates; Debian's chromium for the landing-page screenshot; logrotate
# for the audit log's rotation tests; faketime to step the exporter's wall clock; containerd and ctr, which
# docker.io pulls in anyway, named here because the CRI backend's tests start containerd on its own).
# Only as root on Debian/Ubuntu and only what is missing; otherwise says what is missing.
# `install-test-deps.sh bench` installs only what `make bench` runs: the engine, mkfs for its data roots and
# openssl for the HTTPS scrape's certificates.
set -euo pipefail
declare -A need=(
  [dockerd]=docker.io
  [containerd]=containerd
  [ctr]=containerd
  [prometheus]=prometheus
  [promtool]=prometheus
  [prometheus-alertmanager]=prometheus-alertmanager
  [amtool]=prometheus-alertmanager
  [docker-registry]=docker-registry
  [mmdebstrap]=mmdebstrap
  [docker-compose]=docker-compose
  [mkfs.ext4]=e2fsprogs
  [openssl]=openssl
  [chromium]=chromium
  [logrotate]=logrotate
  [faketime]=faketime
)
if [ "${1:-}" = bench ]; then
  need=([dockerd]=docker.io [mkfs.ext4]=e2fsprogs [openssl]=openssl)
fi
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || [ -x "/sbin/$cmd" ] || missing+=("${need[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "install-test-deps: installing $pkgs"
  export DEBIAN_FRONTEND=noninteractive
  # Another apt (unattended-upgrades at boot, a person) may hold the lock: wait for it instead of failing.
  wait_lock=(-o DPkg::Lock::Timeout=600)
  apt-get "${wait_lock[@]}" update -qq
  # shellcheck disable=SC2086
  apt-get "${wait_lock[@]}" install -y -qq --no-install-recommends $pkgs >/dev/null
  # Debian starts the packaged services; the tests run private instances and never use these.
  for svc in docker.socket docker containerd prometheus prometheus-alertmanager docker-registry; do
    systemctl stop "$svc" >/dev/null 2>&1 || true
  done
else
  echo "install-test-deps: missing $pkgs (run as root on Debian, or install them); engine tests will skip" >&2
fi
