"""The whole system, from a git push to a host that upgraded, and a push the host refuses
(vm tier). It is ``make demo`` with assertions: tests/stack.py wires both.

A private broker, every service, the trigger as its own process, a bare repository with the
post-receive hook, and a test host installed by ``imgline-updater install`` with the release
before, booted like a machine. Two pushes:

1. kickstarts/node.ks: built, tested (live boot), signed, announced; the host applies it,
   reboots into it, passes its health check and reports ``host.upgraded``;
2. the payload now reads /etc/node-payload.conf (examples/payload-config.ks): the image passes
   every test, but this host's admin had a file of their own there, the /etc merge keeps it,
   the payload fails on the host, and the host goes back by itself: ``host.rolled_back``.

Asserted: every message of the run, in order, with the ids that tie them together; the signed
repository's content as a host's TUF client sees it; the host's final layer, version and bad
list read from its disk after it powered off.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import stack
from hostlab import HOST_ID, inspect
from nodeimage import scratch

from imgline.core.broker import broker_access
from imgline.core.trust.client import RepositoryClient
from imgline.core.versions import version_key

pytestmark = pytest.mark.vm

BUILD_AND_TEST = 1800  # a cold package download and a live boot under TCG
HOST_STEP = 900


@pytest.fixture
def system() -> Iterator[stack.System]:
    root = scratch("system-")
    try:
        with (
            broker_access(passwords={"updater": stack.updater_password()}) as broker,
            stack.running_system(broker, root) as running,
        ):
            yield running
    finally:
        shutil.rmtree(root, ignore_errors=True)


def pushed_and_published(system: stack.System, files: dict[str, str], message: str) -> str:
    """Push, wait until the build's release is announced; its version."""
    index = len(system.seen)
    commit = system.push(files, message).commit
    built = system.wait_event(("image.built", "build.failed"), BUILD_AND_TEST, after=index).body
    assert built.get("source_commit") == commit, built
    done = system.wait_event(
        ("image.published", "image.rejected"),
        BUILD_AND_TEST,
        lambda b: b.get("build_id") == built["build_id"],
        after=index,
    )
    assert done.topic == "image.published.stable", done.body
    version: str = done.body["version"]
    return version


def test_a_push_upgrades_the_host_and_a_bad_one_is_rolled_back_by_the_host(
    system: stack.System, tmp_path: Path
) -> None:
    host = stack.installed_host(system, stack.ADMIN_EDITS)
    base = host.release.version
    with host.boot() as vm:
        # the host boots while the first push builds, as a running fleet would be
        first = pushed_and_published(system, stack.first_push_files(), "node image")
        stack.expect(vm, f"IMGLINE-PAYLOAD-READY {base}", HOST_STEP, host.console)
        stack.expect(vm, f"IMGLINE-PAYLOAD-READY {first}", HOST_STEP, host.console)
        stack.expect(vm, f"IMGLINE-HEALTH host.upgraded {first}", HOST_STEP, host.console)
        system.wait_event(("host.upgraded",), 300)

        second = pushed_and_published(
            system, stack.payload_config_push_files(), "payload reads its config"
        )
        stack.expect(vm, f"IMGLINE-HEALTH host.rolled_back {second}", HOST_STEP, host.console)
        stack.expect(vm, f"IMGLINE-PAYLOAD-READY {first}", HOST_STEP, host.console)
        system.wait_event(("host.rolled_back",), 300)
        vm.stop()
    assert version_key(first) < version_key(second)

    # every message of the run, in the order the broker routed them
    events = system.seen
    assert [e.topic for e in events] == [
        "build.requested", "image.built", "image.tested", "image.published.stable",
        "host.upgraded",
        "build.requested", "image.built", "image.tested", "image.published.stable",
        "host.rolled_back",
    ]  # fmt: skip
    for run in (events[0:4], events[5:9]):
        requested, built, tested, published = (e.body for e in run)
        assert requested["name"] == "node" and requested["stream"] == "stable"
        assert requested["source"]["kind"] == "git"
        assert requested["source"]["kickstart_path"] == stack.KICKSTART
        assert built["source_commit"] == requested["source"]["commit"]
        assert built["request_id"] == requested["request_id"]
        assert tested["build_id"] == built["build_id"] == published["build_id"]
        assert tested["passed"] is True
        assert tested["image"]["artifact"]["sha256"] == built["artifact"]["sha256"]
        assert (published["version"], published["stream"]) == (built["version"], "stable")
    assert events[0].body["source"]["commit"] != events[5].body["source"]["commit"]
    upgraded, rolled_back = events[4].body, events[9].body
    assert upgraded["host_id"] == rolled_back["host_id"] == HOST_ID
    assert (upgraded["from_version"], upgraded["to_version"]) == (base, first)
    assert upgraded["layer"] == f"node-{first}+1"
    assert (rolled_back["from_version"], rolled_back["to_version"]) == (first, second)
    assert rolled_back["step"] == "health"
    assert "node-payload.service" in rolled_back["error"]

    # the repository, as a host's TUF client sees it: both releases, from their commits
    client = RepositoryClient.for_base_url(system.base_url, tmp_path / "tuf", root=system.root)
    index = client.releases("stable")
    assert [(r.name, r.version) for r in index.releases] == [("node", second), ("node", first)]
    for release, run in zip(index.releases, (events[5:9], events[0:4]), strict=True):
        manifest = client.manifest("stable", release)
        built = run[1].body
        assert manifest.build_id == built["build_id"]
        assert manifest.source_commit == built["source_commit"]
        assert manifest.image_sha256 == built["artifact"]["sha256"]
        assert manifest.tests.checks > 0

    # the host's disk: back on the first push's layer, the second remembered as bad
    _base, liveimg = stack.host_base()
    seen = inspect(liveimg, host.disk)
    assert seen.state["default_layer"] == f"node-{first}+1"
    assert seen.state["bad_versions"] == [second]
    assert seen.state["pending"] is None
