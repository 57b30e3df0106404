"""A kickstart shaped like oVirt Node's appliance kickstart builds with the mmdebstrap backend
once its mirror lines name a Debian mirror: from a git repository, its base %included and
resized, %packages options honoured, groups, users, ssh keys, kernel arguments and every %post
flavour in the image (services/builder/tests/data/node-appliance.ks)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from nodeimage import APT_CACHE, ROOT_CACHE, build

from imgline.builder.settings import BuilderConfig
from imgline.core import liveimg
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.gitutil import commit_files
from imgline.schemas import payloads as p
from imgline.schemas.messages import ImageBuiltV1

pytestmark = pytest.mark.image

DATA = Path(__file__).resolve().parents[2] / "services" / "builder" / "tests" / "data"
MIRROR_LINES = re.compile(r"^(url|repo) --.*mirrorlist=.*$\n", re.M)


def test_a_node_appliance_kickstart_builds_with_mmdebstrap(tmp_path: Path) -> None:
    main = (DATA / "node-appliance.ks").read_text()
    debian = MIRROR_LINES.sub("", main, count=2)
    assert debian != main and "mirrorlist" not in debian
    debian = "url --url=http://deb.debian.org/debian\n" + debian
    # and a %post log that tries to leave the image through a symlink an earlier %post made
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    debian += (
        f"%post\nln -s {host_dir} /var/escape\n%end\n"
        "%post --log=/var/escape/pwned\necho escaped\n%end\n"
    )
    repo = tmp_path / "vendor"
    commit_files(
        repo,
        {
            "node-appliance.ks": debian,
            "node-appliance-base.ks": (DATA / "node-appliance-base.ks").read_text(),
        },
    )
    config = BuilderConfig(
        store_dir=tmp_path / "store",
        work_dir=tmp_path / "work",
        cache_dir=APT_CACHE,
        root_cache_dir=ROOT_CACHE,
        git_schemes=("file",),
        build_mode="root",  # root mode stays available by config: built the whole way here
    )
    store = LocalArtifactStore(config.store_dir)
    req = p.BuildRequested(
        request_id="appliance-1",
        source=p.GitSource(url=f"file://{repo}", ref="main", kickstart_path="node-appliance.ks"),
        name="node-appliance",
    )
    [msg] = build(config, req)
    assert isinstance(msg, ImageBuiltV1), msg.body
    built = msg.payload

    log_text = (store.read_record("logs", f"{built.build_id}.log") or b"").decode()
    for warning in (
        "node-appliance-base.ks:5: auth is ignored",
        "node-appliance-base.ks:15: part / is replaced by the later one at node-appliance.ks:",
        "--ignoremissing: imgline-no-such-package is not available; building without it",
    ):
        assert warning in log_text, warning

    assert not (host_dir / "pwned").exists()  # the log was opened inside the image
    rootfs = liveimg.extract_rootfs(store.path_for(built.artifact.sha256), tmp_path / "x")
    liveimg.fsck(rootfs)
    assert rootfs.stat().st_size == 2560 * liveimg.MIB  # the variant's part /, not the base's

    def read(path: str) -> str:
        return liveimg.read_file(rootfs, path).decode()

    meta = json.loads(read("/usr/lib/imgline/image.json"))
    assert meta["kernel_args"] == "console=ttyS0,115200n8 rd.shell=0"
    assert read("/etc/imgline-variant") == "node appliance\n"
    assert read("/etc/imgline-python") == "python post ran\n"
    assert "this goes to the log file" in read("/var/log/imgline-post.log")
    assert "ops:x:1500:admin" in read("/etc/group")
    assert read("/home/admin/.ssh/authorized_keys").startswith("ssh-ed25519 AAAAC3Nza")
    # --excludedocs: the copyright stays (Debian policy), the rest of the docs are left out
    docs = liveimg.list_dirs(rootfs, ["/usr/share/doc/lvm2"])["/usr/share/doc/lvm2"]
    assert docs is not None and [e.name for e in docs] == ["copyright"]
    # @core: Debian's important priority is in (e.g. apt-utils, less), not only minbase
    found = liveimg.stat_paths(rootfs, ["/usr/bin/less", "/usr/share/man/man1"])
    assert found["/usr/bin/less"] is not None
    assert (
        found["/usr/share/man/man1"] is None
        or not liveimg.list_dirs(rootfs, ["/usr/share/man/man1"])["/usr/share/man/man1"]
    )
