"""Boot entries, systemd-boot counter names, grubenv and grub.cfg, byte for byte."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from imgline.updater.domain.bootentry import (
    GRUB_D_SNIPPET,
    MAX_TRIES,
    Entry,
    counted_name,
    entry_id,
    grub_cfg_counter_block,
    parse_bls,
    parse_grubenv,
    parse_name,
    plain_name,
    render_bls,
    render_grub_cfg,
    render_grubenv,
    render_loader_conf,
)
from imgline.updater.errors import UpdaterError

pytestmark = pytest.mark.unit

NEW = Entry(
    id="imgline-node-20261201.3",
    title="node 20261201.3",
    version="20261201.3",
    linux="/imgline/node-20261201.3+1/vmlinuz",
    initrd="/imgline/node-20261201.3+1/initrd.img",
    options="root=/dev/imgline/node-20261201.3+1 rw console=ttyS0,115200",
)
OLD = Entry(
    id="imgline-node-20261201.2",
    title="node 20261201.2",
    version="20261201.2",
    linux="/imgline/node-20261201.2+1/vmlinuz",
    initrd="/imgline/node-20261201.2+1/initrd.img",
    options="root=/dev/imgline/node-20261201.2+1 rw",
)


# --- ids ----------------------------------------------------------------------------------------


def test_entry_id() -> None:
    assert entry_id("node", "20261201.3") == "imgline-node-20261201.3"
    assert entry_id("node", "pinned-1.0+rc") == "imgline-node-pinned-1.0+rc"
    assert entry_id("node", "1.0+2a") == "imgline-node-1.0+2a"


@pytest.mark.parametrize("version", ["1.0+2", "1.0+2-1", "rc+0", "x+12-34"])
def test_entry_id_refuses_what_systemd_boot_reads_as_a_counter(version: str) -> None:
    with pytest.raises(UpdaterError, match="systemd-boot would read as a boot counter"):
        entry_id("node", version)


@pytest.mark.parametrize("version", ["a b", "a/b", "a'b", "a\nb"])
def test_entry_id_refuses_odd_characters(version: str) -> None:
    with pytest.raises(UpdaterError, match="may only hold"):
        entry_id("node", version)


# --- BLS ----------------------------------------------------------------------------------------


def test_render_bls() -> None:
    assert render_bls(NEW) == (
        "title node 20261201.3\n"
        "version 20261201.3\n"
        "linux /imgline/node-20261201.3+1/vmlinuz\n"
        "initrd /imgline/node-20261201.3+1/initrd.img\n"
        "options root=/dev/imgline/node-20261201.3+1 rw console=ttyS0,115200\n"
    )
    assert parse_bls(render_bls(NEW), NEW.id) == NEW


def test_parse_bls_as_systemd_boot_does() -> None:
    text = (
        "# written by hand\n"
        "\n"
        "title\tnode   20261201.3  \n"
        "  version 20261201.3\n"
        "machine-id 0123\n"
        "linux /k\n"
        "initrd /i\n"
        "options root=/dev/x\n"
        "options quiet\n"
    )
    assert parse_bls(text, "e") == Entry(
        "e", "node   20261201.3", "20261201.3", "/k", "/i", "root=/dev/x quiet"
    )


def test_parse_bls_names_missing_keys() -> None:
    with pytest.raises(UpdaterError, match="boot entry e lacks initrd, options; rerun the apply"):
        parse_bls("title t\nversion v\nlinux /k\n", "e")


def test_parse_bls_refuses_two_initrds() -> None:
    text = render_bls(NEW) + "initrd /other\n"
    with pytest.raises(UpdaterError, match="2 initrd lines"):
        parse_bls(text, NEW.id)


@pytest.mark.parametrize("bad", ["two\nlines", "", "  "])
def test_render_bls_refuses_broken_values(bad: str) -> None:
    with pytest.raises(UpdaterError, match="empty or spans lines"):
        render_bls(Entry(NEW.id, bad, NEW.version, NEW.linux, NEW.initrd, NEW.options))


# --- systemd-boot names -------------------------------------------------------------------------


def test_counted_and_plain_names() -> None:
    assert plain_name("imgline-node-1") == "imgline-node-1.conf"
    assert counted_name("imgline-node-1", 3) == "imgline-node-1+3.conf"
    assert counted_name("imgline-node-1", 2, 1) == "imgline-node-1+2-1.conf"
    assert counted_name("imgline-node-1", 0) == "imgline-node-1+0.conf"
    with pytest.raises(UpdaterError, match="out of range"):
        counted_name("imgline-node-1", -1)


@pytest.mark.parametrize(
    ("filename", "parsed"),
    [
        ("imgline-node-1.conf", ("imgline-node-1", None, None)),
        ("imgline-node-1+3.conf", ("imgline-node-1", 3, 0)),
        ("imgline-node-1+2-1.conf", ("imgline-node-1", 2, 1)),
        ("imgline-node-1+0-3.conf", ("imgline-node-1", 0, 3)),
        ("a+b+3.conf", ("a+b", 3, 0)),  # the last '+' counts
        ("a+3+b.conf", ("a+3+b", None, None)),  # counter in the middle: not one
        ("a+3-.conf", ("a+3-", None, None)),  # '-' without digits
        ("a+-1.conf", ("a+-1", None, None)),  # no digits before '-'
        ("a+3-4-5.conf", ("a+3-4-5", None, None)),  # trailing junk
        ("a+.conf", ("a+", None, None)),
        ("a+3.CONF", ("a+3", None, None)),  # the counter needs a literal ".conf"
        ("a+2147483647.conf", ("a", 2147483647, 0)),
        ("a+2147483648.conf", ("a+2147483648", None, None)),  # above INT_MAX: ignored
        ("a+1-2147483648.conf", ("a+1-2147483648", None, None)),
        ("a+\u0663.conf", ("a+\u0663", None, None)),  # only ASCII digits are digits
    ],
)
def test_parse_name_like_systemd_boot(
    filename: str, parsed: tuple[str, int | None, int | None]
) -> None:
    assert parse_name(filename) == parsed


def test_parse_name_round_trips_counted_names() -> None:
    for left in range(4):
        for done in range(4):
            assert parse_name(counted_name(NEW.id, left, done)) == (NEW.id, left, done)
    assert parse_name(plain_name(NEW.id)) == (NEW.id, None, None)


def test_parse_name_refuses_other_files() -> None:
    with pytest.raises(UpdaterError, match="not a boot entry file"):
        parse_name("imgline-node-1.conf.bak")


def test_loader_conf() -> None:
    assert render_loader_conf("imgline-node-*") == "default imgline-node-*\ntimeout 0\n"
    assert render_loader_conf("x", 5) == "default x\ntimeout 5\n"
    with pytest.raises(UpdaterError, match="one word"):
        render_loader_conf("a b")
    with pytest.raises(UpdaterError, match="0 or more"):
        render_loader_conf("x", -1)


# --- grubenv ------------------------------------------------------------------------------------


def test_grubenv_round_trip_and_layout() -> None:
    values = {"imgline_default": NEW.id, "boot_counter": "3", "odd": "a\\b=c"}
    block = render_grubenv(values)
    assert len(block) == 1024
    assert block.startswith(
        b"# GRUB Environment Block\n"
        b"imgline_default=imgline-node-20261201.3\n"
        b"boot_counter=3\n"
        b"odd=a\\\\b=c\n"
        b"###"
    )
    assert block.endswith(b"#")
    assert parse_grubenv(block) == values
    assert render_grubenv({}) == b"# GRUB Environment Block\n" + b"#" * 999


def test_parse_grubenv_as_grub_editenv_writes_it() -> None:
    # grub-editenv escapes backslashes and newlines with a backslash
    data = b"# GRUB Environment Block\nsaved_entry=0\nmulti=one\\\ntwo\n#comment\nk=\n" + b"#" * 10
    assert parse_grubenv(data) == {"saved_entry": "0", "multi": "one\ntwo", "k": ""}


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"saved_entry=0\n", "does not start with"),
        (b"# GRUB Environment Block\nnoequals\n", "line without '='"),
        (b"# GRUB Environment Block\nk=\xff\n", "not UTF-8"),
    ],
)
def test_parse_grubenv_refuses_garbage(data: bytes, why: str) -> None:
    with pytest.raises(UpdaterError, match=why) as caught:
        parse_grubenv(data)
    assert "grub-editenv" in str(caught.value)


def test_render_grubenv_refuses_what_does_not_fit() -> None:
    with pytest.raises(UpdaterError, match="would need 1025 bytes, the block holds 1024"):
        render_grubenv({"k": "x" * (1024 - 25 - 3 + 1)})  # header, "k=", "\n": full plus one
    assert render_grubenv({"k": "x" * (1024 - 25 - 3)}).endswith(b"x\n")  # exactly full
    with pytest.raises(UpdaterError, match="spans lines"):
        render_grubenv({"k": "a\nb"})
    with pytest.raises(UpdaterError, match="not a GRUB variable name"):
        render_grubenv({"a-b": "1"})


# --- grub.cfg: a tiny interpreter for the subset the counter block may use ---------------------


@dataclass
class Grub:
    """The GRUB script subset the countdown uses; anything else fails the test, so arithmetic
    or an ``increment`` call cannot sneak in."""

    disk: dict[str, str]  # grubenv on disk
    env: dict[str, str] = field(default_factory=dict)

    def run(self, script: str) -> None:
        lines = [ln.strip() for ln in script.splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith("#")]
        self._block(lines, 0, active=True)

    def _cond(self, text: str) -> bool:
        if m := re.fullmatch(r'\[ "\$\{(\w+)\}" = "(\w*)" \]', text):
            return self.env.get(m.group(1), "") == m.group(2)
        if m := re.fullmatch(r'\[ -n "\$\{(\w+)\}" \]', text):
            return self.env.get(m.group(1), "") != ""
        raise AssertionError(f"condition outside the subset: {text}")

    def _block(self, lines: list[str], i: int, *, active: bool) -> int:
        """Run lines from ``i`` until the elif or fi closing them; return its index."""
        while i < len(lines):
            line = lines[i]
            if line.startswith("elif ") or line == "fi":
                return i
            if m := re.fullmatch(r"if (.+); then", line):
                i = self._if(lines, i, m.group(1), active=active)
                continue
            if active:
                self._statement(line)
            i += 1
        return i

    def _if(self, lines: list[str], i: int, cond: str, *, active: bool) -> int:
        taken = False
        while True:
            holds = self._cond(cond)  # parsed even when skipped, so every branch is checked
            run = active and not taken and holds
            taken = taken or run
            i = self._block(lines, i + 1, active=run)
            if lines[i] == "fi":
                return i + 1
            m = re.fullmatch(r"elif (.+); then", lines[i])
            assert m, f"outside the subset: {lines[i]}"
            cond = m.group(1)

    def _statement(self, line: str) -> None:
        if line == "load_env":
            self.env.update(self.disk)
        elif m := re.fullmatch(r'set (\w+)="\$\{(\w+)\}"', line):
            self.env[m.group(1)] = self.env.get(m.group(2), "")
        elif m := re.fullmatch(r"set (\w+)=(\w+)", line):
            self.env[m.group(1)] = m.group(2)
        elif m := re.fullmatch(r"save_env (\w+)", line):
            self.disk[m.group(1)] = self.env[m.group(1)]
        else:
            raise AssertionError(f"statement outside the subset: {line}")


def boot(disk: dict[str, str], tries: int) -> str:
    """One boot: run the counter block against ``disk`` (updated in place), return the entry."""
    grub = Grub(disk)
    grub.run(grub_cfg_counter_block(tries))
    return grub.env.get("default", "first entry")


ON_TRIAL = {"imgline_default": NEW.id, "imgline_fallback": OLD.id}


@pytest.mark.parametrize("tries", range(1, MAX_TRIES + 1))
def test_a_trial_gets_exactly_tries_boots_then_falls_back(tries: int) -> None:
    disk = {**ON_TRIAL, "boot_counter": str(tries)}
    for left in range(tries - 1, -1, -1):
        assert boot(disk, tries) == NEW.id
        assert disk["boot_counter"] == str(left)
        assert "imgline_fell_back" not in disk
    for _ in range(2):  # and it stays on the previous layer
        assert boot(disk, tries) == OLD.id
        assert disk == {**ON_TRIAL, "boot_counter": "0", "imgline_fell_back": "1"}


@pytest.mark.parametrize("start", ["0", "4", "10", "-1", "three"])
def test_a_counter_the_block_does_not_know_falls_back(start: str) -> None:
    disk = {**ON_TRIAL, "boot_counter": start}
    assert boot(disk, 3) == OLD.id
    assert disk["imgline_fell_back"] == "1"
    assert disk["boot_counter"] == start


def test_no_counter_boots_the_default_and_writes_nothing() -> None:
    disk = dict(ON_TRIAL)
    assert boot(disk, 3) == NEW.id
    assert disk == ON_TRIAL
    assert boot({}, 3) == "first entry"


def test_the_fallback_is_also_grubs_fallback_when_the_kernel_fails_to_load() -> None:
    grub = Grub(dict(ON_TRIAL))
    grub.run(grub_cfg_counter_block(3))
    assert grub.env["fallback"] == OLD.id


def test_counter_block_transitions_are_spelled_out() -> None:
    block = grub_cfg_counter_block(3)
    steps = re.findall(
        r'if \[ "\$\{boot_counter\}" = "(\d)" \]; then\n  set boot_counter=(\d)', block
    )
    assert steps == [("3", "2"), ("2", "1"), ("1", "0")]
    assert "increment" not in block
    assert "decrement" not in block
    with pytest.raises(UpdaterError, match=r"boot tries must be 1\.\.9"):
        grub_cfg_counter_block(0)
    with pytest.raises(UpdaterError, match=r"boot tries must be 1\.\.9"):
        grub_cfg_counter_block(10)


def test_render_grub_cfg() -> None:
    cfg = render_grub_cfg([NEW, OLD], 3, boot_prefix="/boot")
    head, _, menus = cfg.partition(grub_cfg_counter_block(3))
    assert head == (
        "# Written by imgline-updater whenever the boot entries change: edits here are lost.\n"
        "set timeout=1\n"
        "serial --unit=0 --speed=115200\n"
        "terminal_input serial console\n"
        "terminal_output serial console\n"
        "\n"
    )
    assert menus == (
        "\n"
        "menuentry 'node 20261201.3' --id 'imgline-node-20261201.3' {\n"
        "  linux '/boot/imgline/node-20261201.3+1/vmlinuz' 'root=/dev/imgline/node-20261201.3+1'"
        " 'rw' 'console=ttyS0,115200'\n"
        "  initrd '/boot/imgline/node-20261201.3+1/initrd.img'\n"
        "}\n"
        "\n"
        "menuentry 'node 20261201.2' --id 'imgline-node-20261201.2' {\n"
        "  linux '/boot/imgline/node-20261201.2+1/vmlinuz' 'root=/dev/imgline/node-20261201.2+1'"
        " 'rw'\n"
        "  initrd '/boot/imgline/node-20261201.2+1/initrd.img'\n"
        "}\n"
    )
    assert "load_env" in cfg.split("menuentry")[0]


def test_render_grub_cfg_without_entries_still_counts() -> None:
    assert render_grub_cfg([], 2).endswith(grub_cfg_counter_block(2))


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (Entry(NEW.id, "it's new", "v", "/k", "/i", "ro"), "single quote"),
        (Entry(NEW.id, "t", "v", "/k'", "/i", "ro"), "single quote"),
        (Entry(NEW.id, "t", "v", "/k", "/i\n", "ro"), "line break"),
        (Entry(NEW.id, "t", "v", "/k", "/i", "a='b'"), "quote or a backslash"),
        (Entry(NEW.id, "t", "v", "/k", "/i", 'a="b c"'), "quote or a backslash"),
        (Entry(NEW.id, "t", "v", "/k", "/i", "a=b\\c"), "quote or a backslash"),
        (Entry("bad id", "t", "v", "/k", "/i", "ro"), "may only hold"),
    ],
)
def test_render_grub_cfg_refuses_what_it_cannot_quote(entry: Entry, why: str) -> None:
    with pytest.raises(UpdaterError, match=why):
        render_grub_cfg([entry], 3)


def test_render_grub_cfg_refuses_duplicate_entries() -> None:
    with pytest.raises(UpdaterError, match="listed twice"):
        render_grub_cfg([NEW, NEW], 3)


def test_grub_d_snippet_prints_the_counter_block(tmp_path: Path) -> None:
    sh = shutil.which("sh")
    assert sh is not None
    script = tmp_path / "08_imgline_boot_counter"
    script.write_text(GRUB_D_SNIPPET)
    out = subprocess.run([sh, str(script)], capture_output=True, text=True, check=True).stdout
    assert out == grub_cfg_counter_block(MAX_TRIES)
    assert out in render_grub_cfg([NEW], MAX_TRIES)
    assert GRUB_D_SNIPPET.startswith("#!/bin/sh\n")
