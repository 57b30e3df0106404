"""The builder needs no root: run as the unprivileged build user itself (as deploy/ runs it), it
builds node.ks in unshare mode, the image has its own owners, and it removes everything the
build made, although the namespace owns the tree.

The builder runs in its own process as that user, from a second environment of this checkout
on the system's Python (the test environment's interpreter may live where only root can read).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from nodeimage import APT_CACHE, BUILD_USER, CACHE, NODE_KS, REPO, ROOT_CACHE

from imgline.builder.adapters.mmdebstrap import MmdebstrapBackend
from imgline.builder.adapters.rootcache import RootCache
from imgline.core import liveimg
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.userns import BuildUser
from imgline.schemas import payloads as p

pytestmark = pytest.mark.image

SYSTEM_PYTHON = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")

_BUILD = """
import json, sys
from pathlib import Path
sys.path.insert(0, "tests")
from nodeimage import build
from imgline.builder.settings import BuilderConfig
from imgline.schemas import payloads as p
config = BuilderConfig.model_validate_json(sys.argv[1])
req = p.BuildRequested.model_validate_json(sys.argv[2])
[sent] = build(config, req)
print("RESULT " + json.dumps({"topic": sent.topic, "body": sent.body}))
"""


def user_environment() -> Path:
    """This checkout's packages on the system's Python, readable by every user."""
    env = CACHE / "userenv"
    if not SYSTEM_PYTHON.is_file():
        pytest.fail(
            f"{SYSTEM_PYTHON} is missing: apt-get install python3 (the build user's Python)"
        )
    found = shutil.which("uv")
    uv = [found] if found else ["python3", "-m", "uv"]  # as the Makefile finds it
    subprocess.run(
        [*uv, "sync", "--frozen", "--quiet", "--python", str(SYSTEM_PYTHON)],
        cwd=REPO,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(env)},
        check=True,
    )
    return env / "bin" / "python"


def test_the_builder_builds_as_the_build_user_without_root(build_tmp: Path) -> None:
    python = user_environment()
    user = BuildUser.lookup(BUILD_USER)
    # the caches the tests share become the build user's, as on a host where it is the builder
    MmdebstrapBackend(
        "bookworm",
        APT_CACHE,
        None,
        60,
        roots=RootCache(ROOT_CACHE, max_bytes=1, max_age_seconds=1),
        user=BUILD_USER,
    ).build_user()
    os.chown(build_tmp, user.uid, user.gid)
    config = {
        "store_dir": str(build_tmp / "store"),
        "work_dir": str(build_tmp / "work"),
        "cache_dir": str(APT_CACHE),
        "root_cache_dir": str(ROOT_CACHE),
        # no build_user: the builder's own user builds
    }
    kickstart = NODE_KS.read_text(encoding="utf-8") + textwrap.dedent(
        """
        %post
        cat /proc/self/uid_map > /etc/imgline-uid-map
        %end
        """
    )
    req = p.BuildRequested(
        request_id="as-build-user", source=p.InlineSource(kickstart=kickstart), name="node"
    )
    done = subprocess.run(
        user.command([python, "-c", _BUILD, json.dumps(config), req.model_dump_json()]),
        cwd=REPO,
        env={"PATH": os.environ["PATH"], "HOME": str(build_tmp), "LC_ALL": "C.UTF-8"},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    [line] = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    sent = json.loads(line.removeprefix("RESULT "))
    assert sent["topic"].endswith("image.built"), sent
    built = p.ImageBuilt.model_validate(sent["body"])

    store = LocalArtifactStore(build_tmp / "store")
    rootfs = liveimg.extract_rootfs(store.path_for(built.artifact.sha256), build_tmp / "x")
    liveimg.fsck(rootfs)
    inner, outer, _ = liveimg.read_file(rootfs, "/etc/imgline-uid-map").decode().split()
    assert (inner, outer) == ("0", str(user.subuid))  # %post: root of the namespace only
    home = liveimg.stat_path(rootfs, "/home/node")
    assert (home.uid, home.gid) == (1000, 1000)
    shadow = liveimg.stat_path(rootfs, "/etc/shadow")
    assert (shadow.uid, shadow.mode) == (0, 0o640)
    # the build user removed what its namespace made: nothing of the build is left
    assert os.listdir(build_tmp / "work") == []
