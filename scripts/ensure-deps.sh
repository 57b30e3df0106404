#!/usr/bin/env bash
# Install what `make test` and `make demo` need when it is missing: system packages (apt on
# Debian, dnf on Fedora) and uv. Idempotent and quiet when everything is there.
set -euo pipefail

# rabbitmq-server: the private broker; rpm: the tester reads Fedora/EL package databases (and
# its tests build a tiny rpm); nginx: deploy/nginx/ is tested under it; ovmf: UEFI firmware for
# the VM tier's hosts that boot from their own disk; uidmap: newuidmap for unshare-mode builds;
# prometheus: tests scrape every service with a real one (and promtool checks the alert rules);
# systemd: systemd-analyze, -sysusers and -tmpfiles check deploy/systemd (no init is started);
# the rest: image building and the VM tier.
DEBIAN_PACKAGES=(rabbitmq-server mmdebstrap uidmap squashfs-tools e2fsprogs qemu-system-x86 qemu-utils git python3-pip rpm nginx-light ovmf prometheus systemd)
FEDORA_PACKAGES=(rabbitmq-server mmdebstrap squashfs-tools e2fsprogs qemu-system-x86-core qemu-img git python3-pip rpm-build nginx edk2-ovmf golang-github-prometheus systemd)

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "ensure-deps: not root and no sudo: install ${DEBIAN_PACKAGES[*]} yourself" >&2; exit 1; }
  sudo_cmd=(sudo)
fi

if command -v dpkg-query >/dev/null; then
  missing=()
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "ensure-deps: installing ${missing[*]}"
    "${sudo_cmd[@]}" apt-get update -qq
    # RUNLEVEL=1 keeps the system broker and Prometheus from starting: imgline runs its own.
    DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
elif command -v rpm >/dev/null; then
  missing=()
  for pkg in "${FEDORA_PACKAGES[@]}"; do rpm -q "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "ensure-deps: installing ${missing[*]}"
    "${sudo_cmd[@]}" dnf install -y -q "${missing[@]}"
  fi
else
  echo "ensure-deps: neither apt nor dnf found; install: ${DEBIAN_PACKAGES[*]}" >&2
  exit 1
fi

if ! command -v uv >/dev/null && ! python3 -m uv --version >/dev/null 2>&1; then
  echo "ensure-deps: installing uv from PyPI"
  python3 -m pip install -q uv 2>/dev/null \
    || python3 -m pip install -q --break-system-packages uv
fi

# the account the tests' and the demo's unshare-mode builds run as
"$(dirname "$0")/ensure-build-user.sh" imgline-build
