#!/usr/bin/env bash
# Create the unprivileged account unshare-mode builds run as (the builder's build_user), with
# the 65536 subordinate ids its user namespace maps, when it is missing. Idempotent.
# Usage: ensure-build-user.sh [name]   (default imgline-build)
set -euo pipefail
name=${1:-imgline-build}
[[ $name =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || { echo "ensure-build-user: bad user name: $name" >&2; exit 2; }

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)

if ! getent passwd "$name" >/dev/null; then
  echo "ensure-build-user: creating system user $name"
  "${sudo_cmd[@]}" useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin "$name"
fi

# a free block of 65536 ids in $1, above every range already given out there
next_free() {
  if [ -f "$1" ]; then
    awk -F: 'BEGIN { top = 100000 } NF == 3 && $2 + $3 > top { top = $2 + $3 } END { print top }' "$1"
  else
    echo 100000
  fi
}
for file in /etc/subuid /etc/subgid; do
  if ! grep -q "^$name:" "$file" 2>/dev/null; then
    start=$(next_free "$file")
    end=$((start + 65535))
    echo "ensure-build-user: giving $name the ids $start-$end in $file"
    if [ "$file" = /etc/subuid ]; then
      "${sudo_cmd[@]}" usermod --add-subuids "$start-$end" "$name"
    else
      "${sudo_cmd[@]}" usermod --add-subgids "$start-$end" "$name"
    fi
  fi
done
