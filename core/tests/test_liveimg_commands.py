"""liveimg level 1 and 2: options, sizing arithmetic and the exact command lines.

The real tools run in tests/image/test_liveimg.py; this only pins what we ask them to do.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imgline.core import liveimg
from imgline.core.liveimg import LiveImgError, check_fits, ext4_command, squashfs_command

pytestmark = pytest.mark.unit

MIB = 1 << 20


def test_ext4_command() -> None:
    assert ext4_command(Path("/b/root"), Path("/w/rootfs.img"), size_mib=2048) == [
        "mke2fs",
        "-t",
        "ext4",
        "-F",
        "-q",
        "-L",
        "imgline-root",
        "-b",
        "4096",
        "-I",
        "256",
        "-i",
        "16384",
        "-d",
        "/b/root",
        "/w/rootfs.img",
        "2048M",
    ]


def test_ext4_command_label_and_extra_options() -> None:
    uuid = "0b2f5e8e-6a1b-4c39-9d7e-0f5d1a2b3c4d"
    argv = ext4_command(
        Path("r"),
        Path("i.img"),
        label="node-root",
        size_mib=64,
        extra_options=["-U", uuid, "-E", f"hash_seed={uuid}"],
    )
    assert argv[5:7] == ["-L", "node-root"]
    assert argv[13:] == ["-d", "r", "-U", uuid, "-E", f"hash_seed={uuid}", "i.img", "64M"]


@pytest.mark.parametrize(
    ("label", "size_mib", "complaint"),
    [
        ("", 64, "label"),
        ("x" * 17, 64, "label"),
        ("imgline-root", 0, "positive"),
        ("imgline-root", -5, "positive"),
    ],
)
def test_ext4_command_refuses(label: str, size_mib: int, complaint: str) -> None:
    with pytest.raises(LiveImgError, match=complaint):
        ext4_command(Path("r"), Path("i"), label=label, size_mib=size_mib)


@pytest.mark.parametrize(
    ("compression", "level", "options"),
    [
        ("zstd", None, ["-Xcompression-level", "6"]),
        ("zstd", 19, ["-Xcompression-level", "19"]),
        ("gzip", None, []),
        ("gzip", 9, ["-Xcompression-level", "9"]),
        ("xz", None, []),
        ("lz4", None, []),
        ("lzo", None, []),
    ],
)
def test_squashfs_command(compression: str, level: int | None, options: list[str]) -> None:
    assert squashfs_command(Path("/w/stage"), Path("/o/node.squashfs.img"), compression, level) == [
        "mksquashfs",
        "/w/stage",
        "/o/node.squashfs.img",
        "-noappend",
        "-comp",
        compression,
        *options,
        "-all-root",
        "-no-progress",
    ]


@pytest.mark.parametrize(
    ("compression", "level", "advice"),
    [
        ("zstd", 0, "use 1-22"),
        ("zstd", 23, "use 1-22"),
        ("gzip", 10, "use 1-9"),
        ("xz", 6, "leave the level out"),
    ],
)
def test_levels_a_compressor_does_not_have_are_refused(
    compression: str, level: int, advice: str
) -> None:
    with pytest.raises(LiveImgError, match=f"has no level {level}: {advice}"):
        squashfs_command(Path("s"), Path("o"), compression, level)


@pytest.mark.parametrize(
    "compression", ["", "ZSTD", "lzma", "bzip2", "zstd -Xcompression-level 22"]
)
def test_invalid_compression(compression: str) -> None:
    with pytest.raises(LiveImgError, match="use one of zstd, xz, gzip, lz4, lzo"):
        squashfs_command(Path("s"), Path("o"), compression)


def test_assemble_checks_compression_before_touching_the_tree(tmp_path: Path) -> None:
    with pytest.raises(LiveImgError, match="bzip2"):
        liveimg.assemble(
            tmp_path / "missing-root",
            tmp_path / "out.img",
            size_mib=64,
            meta={},
            compression="bzip2",
            workdir=tmp_path,
        )


@pytest.mark.parametrize(
    ("tree_bytes", "inodes", "size_mib", "fits"),
    [
        (0, 10, 16, True),
        (10 * MIB, 500, 64, True),
        (60 * MIB, 100, 64, False),  # 64 MiB minus inode tables, journal, metadata
        (50 * MIB, 100, 64, True),
        (250 * MIB, 5_000, 300, True),
        (290 * MIB, 5_000, 300, False),
        (1800 * MIB, 60_000, 2200, True),
        (1950 * MIB, 60_000, 2200, False),
        (1 * MIB, 5_000, 64, False),  # out of inodes: 64 MiB holds 4096 - 11
        (1 * MIB, 4_085, 64, True),
        (0, 0, 0, False),
    ],
)
def test_check_fits_table(tree_bytes: int, inodes: int, size_mib: int, fits: bool) -> None:
    if fits:
        check_fits(tree_bytes, inodes, size_mib)
    else:
        with pytest.raises(LiveImgError):
            check_fits(tree_bytes, inodes, size_mib)


def test_check_fits_message_says_how_much() -> None:
    need = liveimg.min_size_mib(900 * MIB, 20_000)
    with pytest.raises(LiveImgError) as err:
        check_fits(900 * MIB, 20_000, 512)
    assert str(err.value) == (
        f"the root tree needs about {need} MiB but part / --size is 512 MiB: raise --size"
    )
    assert 900 < need < 1100
    check_fits(900 * MIB, 20_000, need)
    with pytest.raises(LiveImgError):
        check_fits(900 * MIB, 20_000, need - 1)


def test_check_fits_message_for_inodes() -> None:
    with pytest.raises(LiveImgError, match=r"has 50000 files and directories .* raise --size"):
        check_fits(10 * MIB, 50_000, 256)


@pytest.mark.parametrize(
    ("tree_bytes", "inodes"),
    [(0, 1), (5 * MIB, 40_000), (300 * MIB, 8_000), (4000 * MIB, 120_000), (20_000 * MIB, 10)],
)
def test_min_size_is_the_boundary(tree_bytes: int, inodes: int) -> None:
    size = liveimg.min_size_mib(tree_bytes, inodes)
    check_fits(tree_bytes, inodes, size)
    with pytest.raises(LiveImgError):
        check_fits(tree_bytes, inodes, size - 1)


@pytest.mark.parametrize(
    ("size_mib", "journal_mib"),
    [(4, 0), (64, 4), (127, 4), (128, 16), (1023, 16), (1024, 32), (2048, 64), (20_000, 128)],
)
def test_journal_sizes_follow_mke2fs(size_mib: int, journal_mib: int) -> None:
    # As measured with dumpe2fs on images made by ext4_command (e2fsprogs 1.47.0).
    assert liveimg._journal_bytes(size_mib * MIB) == journal_mib * MIB
