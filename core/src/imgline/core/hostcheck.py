"""The health checks of a booted host, defined once: the updater runs them on each host after
an upgrade, and the tester runs the very same script inside the guest it boots an image in
(docs/health.md).

The checks are a POSIX shell script, not Python, because they run inside images: an image has
``/bin/sh`` and systemd, but not necessarily a Python, and never imgline's packages. The script
prints one line per check, ``IMGLINE-CHECK <ok|failed> <name> <detail>`` (line breaks in the
detail written as ``\\n``), then ``IMGLINE-CHECK-END <failed count>``; ``parse`` reads that
back. Nothing the script prints is trusted beyond that: a line that does not parse is ignored,
and a run without its end line is incomplete.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

#: Executables here must exit 0 for a boot to count as healthy (greenboot-style drop-ins).
DROP_IN_DIR = "/etc/imgline/health.d"
DISK_MAX_PERCENT = 90
LINE = "IMGLINE-CHECK"
END = "IMGLINE-CHECK-END"

SCRIPT = r"""#!/bin/sh
# imgline host checks: one definition for hosts (imgline-updater health) and for the tester's
# guests. Options:
#   -w SECONDS  wait up to SECONDS for the boot to finish, then check the system state
#   -s SECONDS  how long the -u units may take to become active
#   -S SECONDS  how long a unit's main process must have been up to count (a service that
#               crashes and is restarted is "active" for a moment each time)
#   -u UNIT     a unit that must be active (repeatable)
#   -m MOUNT    a mount point whose use must be at most -d percent (repeatable)
#   -d PERCENT  the disk use limit
#   -x DIR      every executable file in DIR must exit 0
#   -t SECONDS  the time limit of each of those
# One line per check: IMGLINE-CHECK <ok|failed> <name> <detail>, then IMGLINE-CHECK-END <n>.
set -u
wait_boot='' settle=120 stable=10 units='' mounts='' disk_max=90 dropins='' limit=60 failed=0
while getopts w:s:S:u:m:d:x:t: opt; do
    case $opt in
        w) wait_boot=$OPTARG ;;
        s) settle=$OPTARG ;;
        S) stable=$OPTARG ;;
        u) units="$units $OPTARG" ;;
        m) mounts="$mounts $OPTARG" ;;
        d) disk_max=$OPTARG ;;
        x) dropins=$OPTARG ;;
        t) limit=$OPTARG ;;
        *) echo "usage: hostcheck [-w s] [-s s] [-S s] [-u unit]... [-m mount]... [-d %]" \
               "[-x dir]" \
               "[-t s]" >&2
           exit 64 ;;
    esac
done

now() { date +%s; }

# emit STATUS NAME DETAIL: the detail on one line, its line breaks as \n
emit() {
    [ "$1" = ok ] || failed=$((failed + 1))
    printf '%s %s %s %s\n' IMGLINE-CHECK "$1" "$2" \
        "$(printf '%s\n' "$3" | awk '{ printf "%s%s", (NR > 1 ? "\\n" : ""), $0 }')"
}

# microseconds since boot, the clock of systemd's *TimestampMonotonic properties (a host that
# never suspends; HOSTCHECK_UPTIME lets the tests give their own)
uptime_us() { awk '{ printf "%.0f", $1 * 1000000 }' "${HOSTCHECK_UPTIME:-/proc/uptime}"; }

# unit_state UNIT: "active" (its main process up for at least -S seconds), "done" (a oneshot
# that ran and exited 0), "skipped" (a oneshot whose condition said it was not needed, e.g.
# host keys already made); else fails, with why in $why
unit_state() {
    why=''
    props=$(systemctl show -p Type -p Result -p ActiveState -p ExecMainStartTimestampMonotonic \
        -p ConditionResult -p ConditionTimestampMonotonic -p NRestarts -- "$1" 2>/dev/null)
    if systemctl is-active --quiet -- "$1"; then
        started=$(printf '%s\n' "$props" | sed -n 's/^ExecMainStartTimestampMonotonic=//p')
        case $props in *Type=oneshot*) started=0 ;; esac
        case $started in ''|*[!0-9]*) started=0 ;; esac
        if [ "$started" -gt 0 ] && [ $(( $(uptime_us) - started )) -lt $(( stable * 1000000 )) ]
        then
            restarts=$(printf '%s\n' "$props" | sed -n 's/^NRestarts=//p')
            why="$1 is active, but its process has been up for less than ${stable}s"
            case $restarts in ''|0) ;; *) why="$why (restarted $restarts times)" ;; esac
            return 1
        fi
        echo active; return 0
    fi
    case $props in *Type=oneshot*) ;; *) return 1 ;; esac
    case $props in *Result=success*) ;; *) return 1 ;; esac
    case $props in *ActiveState=inactive*) ;; *) return 1 ;; esac
    case $props in *ExecMainStartTimestampMonotonic=0*) ;; *) echo done; return 0 ;; esac
    case $props in
        *ConditionResult=no*) case $props in
            *ConditionTimestampMonotonic=0*) ;;
            *) echo skipped; return 0 ;;
        esac ;;
    esac
    return 1
}

journal() {
    journalctl -b --no-pager -o short-monotonic -n "$2" -u "$1" 2>&1
}

if [ -n "$wait_boot" ]; then
    deadline=$(( $(now) + wait_boot ))
    while :; do
        state=$(systemctl is-system-running 2>/dev/null)
        case $state in
            initializing|starting) [ "$(now)" -lt "$deadline" ] && { sleep 1; continue; } ;;
        esac
        break
    done
    case $state in
        running) emit ok system running ;;
        starting|initializing)
            emit failed system "$state after ${wait_boot}s; jobs still queued:
$(systemctl list-jobs --no-legend --no-pager 2>&1 | head -n 20)" ;;
        *) emit failed system "${state:-unknown}" ;;
    esac
fi

deadline=$(( $(now) + settle ))
for unit in $units; do
    while ! unit_state "$unit" >/dev/null && [ "$(now)" -lt "$deadline" ]; do
        sleep 1
    done
    if unit_state "$unit" >/dev/null; then
        emit ok "unit:$unit" "$(unit_state "$unit")"
    else
        if [ -z "$why" ]; then
            state=$(systemctl is-active -- "$unit" 2>&1)
            why="$unit is ${state:-not active}"
        fi
        emit failed "unit:$unit" "$why
$(journal "$unit" 15)"
    fi
done

if out=$(systemctl list-units --state=failed --no-legend --plain --no-pager 2>&1); then
    names=$(printf '%s\n' "$out" | awk 'NF { print $1 }')
    if [ -z "$names" ]; then
        emit ok failed-units none
    else
        detail=$(echo $names)
        for name in $names; do
            detail="$detail
--- $name
$(journal "$name" 10)"
        done
        emit failed failed-units "$detail"
    fi
else
    emit failed failed-units "systemctl list-units failed: $out"
fi

for mount in $mounts; do
    used=$(df -P -- "$mount" 2>/dev/null | awk 'NR == 2 { sub("%", "", $5); print $5 }')
    case $used in
        ''|*[!0-9]*) emit failed "disk:$mount" "df cannot tell the use of $mount" ;;
        *) if [ "$used" -le "$disk_max" ]; then
               emit ok "disk:$mount" "$used% used (limit $disk_max%)"
           else
               emit failed "disk:$mount" "$used% used (limit $disk_max%)"
           fi ;;
    esac
done

if [ -n "$dropins" ] && [ -d "$dropins" ]; then
    for script in "$dropins"/*; do
        [ -f "$script" ] && [ -x "$script" ] || continue
        name=$(printf '%s' "${script##*/}" | tr -c 'A-Za-z0-9._@+-' '_')
        out=$(timeout "$limit" "$script" 2>&1)
        rc=$?
        if [ "$rc" -eq 0 ]; then
            emit ok "script:$name" "$(printf '%s\n' "$out" | tail -n 20)"
        else
            why="exit $rc"
            [ "$rc" -eq 124 ] && why="$why (timed out after ${limit}s)"
            emit failed "script:$name" "$why
$(printf '%s\n' "$out" | tail -n 20)"
        fi
    done
fi

echo "IMGLINE-CHECK-END $failed"
[ "$failed" -eq 0 ]
"""

_UNIT = re.compile(r"^[A-Za-z0-9:_.@\\-]+$")
_MOUNT = re.compile(r"^/[A-Za-z0-9._/@+-]*$")
_CHECK = re.compile(rf"^{LINE} (ok|failed) (\S+) ?(.*)$")
_END = re.compile(rf"^{END} (\d+)$")


class HostCheckError(ValueError):
    """A value that would not reach the script as one word (a unit name with a space)."""


@dataclass(frozen=True)
class HostCheck:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Report:
    """What a run printed: its checks, and whether it got to the end (a run cut short by a
    crash, a time-out or a reboot has no end line and proves nothing)."""

    checks: tuple[HostCheck, ...]
    complete: bool

    @property
    def ok(self) -> bool:
        return self.complete and all(c.ok for c in self.checks)


def arguments(
    *,
    units: Sequence[str] = (),
    mounts: Sequence[str] = (),
    settle_seconds: float = 120,
    stable_seconds: float = 10,
    wait_boot_seconds: float | None = None,
    disk_max_percent: int = DISK_MAX_PERCENT,
    drop_in_dir: str | None = DROP_IN_DIR,
    script_timeout_seconds: float = 60,
) -> list[str]:
    """The script's options; every value is checked to be one harmless word first."""
    args: list[str] = []
    if wait_boot_seconds is not None:
        args += ["-w", str(int(wait_boot_seconds))]
    args += ["-s", str(int(settle_seconds)), "-S", str(max(0, int(stable_seconds)))]
    args += ["-d", str(int(disk_max_percent))]
    args += ["-t", str(max(1, int(script_timeout_seconds)))]
    for unit in units:
        if not _UNIT.match(unit):
            raise HostCheckError(f"{unit!r} is not a systemd unit name")
        args += ["-u", unit]
    for mount in mounts:
        if not _MOUNT.match(mount):
            raise HostCheckError(f"{mount!r} is not a plain absolute path")
        args += ["-m", mount]
    if drop_in_dir is not None:
        if not _MOUNT.match(drop_in_dir):
            raise HostCheckError(f"{drop_in_dir!r} is not a plain absolute path")
        args += ["-x", drop_in_dir]
    return args


def parse(text: str) -> Report:
    """The checks in ``text`` (other lines, e.g. a console's, are skipped)."""
    checks: list[HostCheck] = []
    complete = False
    for raw in text.splitlines():
        line = raw.replace("\r", "").strip()
        if (m := _CHECK.match(line)) is not None:
            checks.append(
                HostCheck(m.group(2), m.group(1) == "ok", m.group(3).replace("\\n", "\n"))
            )
        elif _END.match(line):
            complete = True
    return Report(tuple(checks), complete)
