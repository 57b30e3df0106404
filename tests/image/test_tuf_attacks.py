"""The host's client (python-tuf's ngclient) against each attack in TUF's threat model.

A real repository is written by the publisher and copied to a mirror served over loopback;
the attacker controls the mirror (and, where the attack needs it, a stolen key). Each attack
must be refused with its reason, and the host must still see the genuine release afterwards
where one exists.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, MetaFile, TargetFile
from tufrepo import Mirror, Site, client, make_site, make_tested, mirror_of, sync_mirror

from imgline.core.trust import admin, layout
from imgline.core.trust.client import ClientLimits
from imgline.core.trust.errors import TrustError
from imgline.core.trust.keys import SigningKey
from imgline.core.trust.repository import SERIALIZER

pytestmark = pytest.mark.image


@pytest.fixture
def site(tmp_path: Path) -> Site:
    s = make_site(tmp_path)
    pub = s.publisher()
    for version in ("1", "2"):
        tested, image = make_tested(tmp_path, version)
        pub.publish(tested, image)
    return s


@pytest.fixture
def mirror(site: Site, tmp_path: Path) -> Iterator[Mirror]:
    with mirror_of(site.root, tmp_path / "mirror") as m:
        yield m


def pinned(site: Site) -> bytes:
    return (site.root / "metadata" / "1.root.json").read_bytes()


def refused(reason: str, call: object, *args: object) -> TrustError:
    with pytest.raises(TrustError) as info:
        call(*args)  # type: ignore[operator]
    assert info.value.reason == reason, str(info.value)
    return info.value


def read_md(path: Path) -> Metadata:  # type: ignore[type-arg]
    return Metadata.from_bytes(path.read_bytes())


def write_md(md: Metadata, path: Path, signers: list[SigningKey]) -> bytes:  # type: ignore[type-arg]
    md.signatures.clear()
    for key in signers:
        md.sign(key.signer, append=True)
    data = md.to_bytes(SERIALIZER)
    path.write_bytes(data)
    return data


def meta(version: int, data: bytes) -> MetaFile:
    return MetaFile.from_data(version, data, ["sha256"])


def forge_chain(
    mirror_dir: Path,
    role: str,
    edit: object,
    *,
    role_keys: list[SigningKey],
    snapshot_keys: list[SigningKey],
    timestamp_keys: list[SigningKey],
) -> None:
    """An attacker's new version of ``role`` (``edit`` applied), listed by a new snapshot and
    timestamp signed with the keys given (stolen or not)."""
    md_dir = mirror_dir / "metadata"
    ts = read_md(md_dir / "timestamp.json")
    snap = read_md(md_dir / f"{ts.signed.snapshot_meta.version}.snapshot.json")
    current = snap.signed.meta[f"{role}.json"].version
    md = read_md(md_dir / f"{current}.{role}.json")
    edit(md.signed)  # type: ignore[operator]
    md.signed.version = current + 1
    data = write_md(md, md_dir / f"{current + 1}.{role}.json", role_keys)
    snap.signed.meta[f"{role}.json"] = meta(current + 1, data)
    snap.signed.version += 1
    sdata = write_md(snap, md_dir / f"{snap.signed.version}.snapshot.json", snapshot_keys)
    ts.signed.snapshot_meta = meta(snap.signed.version, sdata)
    ts.signed.version += 1
    write_md(ts, md_dir / "timestamp.json", timestamp_keys)


def online(site: Site, role: str) -> list[SigningKey]:
    return site.keys.keys(role)


def evil_target(mirror_dir: Path, path: str) -> TargetFile:
    data = b"#!/bin/sh\necho owned\n"
    info = TargetFile.from_data(path, data, ["sha256"])
    dest = mirror_dir / "targets" / layout.hashed_path(path, info.hashes["sha256"])
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    return info


def slip_in(site: Site, mirror_dir: Path, role: str, path: str, keys: list[SigningKey]) -> None:
    """A malicious target in ``role`` signed with ``keys``, listed by a snapshot and timestamp
    that the genuine online keys sign (the attacker holds only ``keys``)."""
    info = evil_target(mirror_dir, path)
    forge_chain(
        mirror_dir,
        role,
        lambda t: t.targets.update({path: info}),
        role_keys=keys,
        snapshot_keys=online(site, "snapshot"),
        timestamp_keys=online(site, "timestamp"),
    )


# --- the genuine path -----------------------------------------------------------------------


def test_genuine_release_verifies_and_downloads(site: Site, mirror: Mirror, tmp_path: Path) -> None:
    host = client(mirror.url, tmp_path / "host", pinned(site))
    latest = host.latest("stable", "node")
    assert latest is not None and latest.version == "2"
    image = host.download(latest.image, tmp_path / "node.img")
    assert image.stat().st_size == latest.image_size
    ks = host.download(latest.install_ks, tmp_path / "install.ks").read_text()
    assert f"--checksum={latest.image_sha256}" in ks


# --- arbitrary software ---------------------------------------------------------------------


def test_tampered_image_is_refused_and_not_kept(site: Site, mirror: Mirror, tmp_path: Path) -> None:
    host = client(mirror.url, tmp_path / "host", pinned(site))
    latest = host.latest("stable", "node")
    assert latest is not None
    served = mirror.directory / "targets" / layout.hashed_path(latest.image, latest.image_sha256)
    data = bytearray(served.read_bytes())
    data[len(data) // 2] ^= 1
    served.write_bytes(bytes(data))
    err = refused("tampered", host.download, latest.image, tmp_path / "node.img")
    assert latest.image in str(err)
    assert not (tmp_path / "node.img").exists()
    assert not (tmp_path / "node.img.part").exists()  # never resumed from proven-bad bytes


def test_tampered_metadata_is_refused(site: Site, mirror: Mirror, tmp_path: Path) -> None:
    ts_path = mirror.directory / "metadata" / "timestamp.json"
    doc = json.loads(ts_path.read_bytes())
    doc["signed"]["expires"] = "2099-01-01T00:00:00Z"  # keep the signature: it no longer fits
    ts_path.write_text(json.dumps(doc))
    refused("unsigned", client(mirror.url, tmp_path / "host", pinned(site)).refresh)


def test_tampered_stream_role_is_refused(site: Site, mirror: Mirror, tmp_path: Path) -> None:
    role = mirror.directory / "metadata" / "2.stream-stable.json"
    doc = json.loads(role.read_bytes())
    doc["signed"]["targets"]["stable/node/2/node-2.squashfs.img"]["length"] += 1
    role.write_text(json.dumps(doc, separators=(",", ":")))
    host = client(mirror.url, tmp_path / "host", pinned(site))
    host.refresh()
    err = refused("tampered", host.releases, "stable")
    assert "stable/releases.json" in str(err)


def test_metadata_signed_by_an_unknown_key_is_refused(
    site: Site, mirror: Mirror, tmp_path: Path
) -> None:
    attacker = CryptoSigner.generate_ed25519()
    stranger = SigningKey(attacker, attacker.public_key)
    forge_chain(
        mirror.directory,
        "stream-stable",
        lambda t: t.targets.update({"x": evil_target(mirror.directory, "x")}),
        role_keys=[stranger],
        snapshot_keys=[stranger],
        timestamp_keys=[stranger],
    )
    refused("unsigned", client(mirror.url, tmp_path / "host", pinned(site)).refresh)


# --- rollback -------------------------------------------------------------------------------


def test_rollback_to_an_older_timestamp_is_refused(
    site: Site, mirror: Mirror, tmp_path: Path
) -> None:
    old = (mirror.directory / "metadata" / "timestamp.json").read_bytes()
    host = client(mirror.url, tmp_path / "host", pinned(site))
    tested, image = make_tested(tmp_path, "3")
    site.publisher().publish(tested, image)
    sync_mirror(site.root, mirror.directory)
    assert host.latest("stable", "node").version == "3"  # type: ignore[union-attr]
    (mirror.directory / "metadata" / "timestamp.json").write_bytes(old)  # replayed
    again = client(mirror.url, tmp_path / "host")  # the same host, after a restart
    refused("rollback", again.refresh)


def test_rollback_of_snapshot_with_a_stolen_timestamp_key_is_refused(
    site: Site, mirror: Mirror, tmp_path: Path
) -> None:
    host = client(mirror.url, tmp_path / "host", pinned(site))
    host.refresh()
    md = mirror.directory / "metadata"
    ts = read_md(md / "timestamp.json")
    older = ts.signed.snapshot_meta.version - 1
    ts.signed.snapshot_meta = meta(older, (md / f"{older}.snapshot.json").read_bytes())
    ts.signed.version += 1
    write_md(ts, md / "timestamp.json", online(site, "timestamp"))
    refused("rollback", client(mirror.url, tmp_path / "host").refresh)


def test_rollback_of_a_stream_role_with_stolen_online_keys_is_refused(
    site: Site, mirror: Mirror, tmp_path: Path
) -> None:
    host = client(mirror.url, tmp_path / "host", pinned(site))
    host.releases("stable")  # the host now trusts stream-stable version 2
    md = mirror.directory / "metadata"
    ts = read_md(md / "timestamp.json")
    snap = read_md(md / f"{ts.signed.snapshot_meta.version}.snapshot.json")
    snap.signed.meta["stream-stable.json"] = meta(1, (md / "1.stream-stable.json").read_bytes())
    snap.signed.version += 1
    data = write_md(snap, md / f"{snap.signed.version}.snapshot.json", online(site, "snapshot"))
    ts.signed.snapshot_meta = meta(snap.signed.version, data)
    ts.signed.version += 1
    write_md(ts, md / "timestamp.json", online(site, "timestamp"))
    refused("rollback", client(mirror.url, tmp_path / "host").refresh)


# --- indefinite freeze ----------------------------------------------------------------------


def test_expired_timestamp_is_refused(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    site.clock.advance(timedelta(days=-3))  # everything signed three days ago
    tested, image = make_tested(tmp_path, "1")
    site.publisher().publish(tested, image)
    with mirror_of(site.root, tmp_path / "mirror") as m:
        err = refused("expired", client(m.url, tmp_path / "host", pinned(site)).refresh)
        assert "timestamp" in str(err)


def test_frozen_mirror_is_refused_once_the_timestamp_expires(tmp_path: Path) -> None:
    """A mirror that stops updating serves a timestamp signed 20 h ago; 5 h later it is past
    its one-day life, whatever else the mirror does."""
    site = make_site(tmp_path)
    site.clock.advance(timedelta(hours=-20))
    tested, image = make_tested(tmp_path, "1")
    site.publisher().publish(tested, image)
    with mirror_of(site.root, tmp_path / "mirror") as m:
        host = client(m.url, tmp_path / "host", pinned(site))
        assert host.latest("stable", "node") is not None
        ts = read_md(m.directory / "metadata" / "timestamp.json")
        assert ts.signed.expires - datetime.now(UTC) < timedelta(hours=5)


def test_refresh_re_signs_the_timestamp_before_it_expires(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    tested, image = make_tested(tmp_path, "1")
    site.publisher().publish(tested, image)
    tuf = site.tuf()
    before = tuf.load().timestamp.signed
    assert tuf.refresh() == []  # fresh: nothing due
    site.clock.advance(timedelta(hours=13))  # past half of one day
    assert tuf.refresh() == ["snapshot", "timestamp"]
    after = tuf.load().timestamp.signed
    assert after.version == before.version + 1 and after.expires > before.expires


# --- mix and match --------------------------------------------------------------------------


def test_mix_and_match_of_role_versions_is_refused(
    site: Site, mirror: Mirror, tmp_path: Path
) -> None:
    md = mirror.directory / "metadata"
    (md / "2.stream-stable.json").write_bytes((md / "1.stream-stable.json").read_bytes())
    host = client(mirror.url, tmp_path / "host", pinned(site))
    host.refresh()
    refused("tampered", host.releases, "stable")


# --- endless data ---------------------------------------------------------------------------


def test_endless_timestamp_is_cut_off(site: Site, mirror: Mirror, tmp_path: Path) -> None:
    mirror.endless.add("timestamp.json")
    host = client(mirror.url, tmp_path / "host", pinned(site))
    refused("too_large", host.refresh)
    assert host.bytes_received < 2 * ClientLimits().timestamp_max_bytes + 65536


def test_endless_image_is_cut_off_at_its_signed_length(
    site: Site, mirror: Mirror, tmp_path: Path
) -> None:
    host = client(mirror.url, tmp_path / "host", pinned(site))
    latest = host.latest("stable", "node")
    assert latest is not None
    mirror.endless.add(latest.image.rpartition("/")[2])
    refused("too_large", host.download, latest.image, tmp_path / "node.img")
    assert not (tmp_path / "node.img").exists()


# --- slow retrieval -------------------------------------------------------------------------


def test_trickling_server_is_given_up_on(site: Site, mirror: Mirror, tmp_path: Path) -> None:
    mirror.trickle.add("timestamp.json")  # 20 bytes a second, each under the read timeout
    limits = ClientLimits(read_timeout=5, metadata_seconds=2)
    host = client(mirror.url, tmp_path / "host", pinned(site), limits)
    refused("slow", host.refresh)


# --- wrong software -------------------------------------------------------------------------


@pytest.fixture
def two_streams(tmp_path: Path) -> Site:
    """node-1 in stable, node-2 in beta, each stream with its own role and key."""
    site = make_site(tmp_path)
    pub = site.publisher()
    for version, stream in (("1", "stable"), ("2", "beta")):
        tested, image = make_tested(tmp_path, version, stream=stream)
        pub.publish(tested, image)
    return site


def test_another_streams_role_cannot_hand_out_this_streams_targets(
    two_streams: Site, tmp_path: Path
) -> None:
    """The beta stream's signer (here: the publisher's own beta key) lists a target under
    stable/: hosts of stable never see it, because only stream-stable is trusted there."""
    site = two_streams
    with mirror_of(site.root, tmp_path / "mirror") as m:
        path = "stable/node/9/node-9.squashfs.img"
        slip_in(site, m.directory, "stream-beta", path, online(site, "stream-beta"))
        host = client(m.url, tmp_path / "host", pinned(site))
        refused("not_found", host.target, path)
        assert host.latest("stable", "node").version == "1"  # type: ignore[union-attr]


def test_a_release_list_of_another_stream_is_refused(two_streams: Site, tmp_path: Path) -> None:
    site = two_streams
    with mirror_of(site.root, tmp_path / "mirror") as m:
        tuf = site.tuf()
        state = tuf.load()
        stable_index = state.targets["stream-stable"].signed.targets["stable/releases.json"]
        data = (
            m.directory
            / "targets"
            / layout.hashed_path(stable_index.path, stable_index.hashes["sha256"])
        ).read_bytes()
        info = TargetFile.from_data("beta/releases.json", data, ["sha256"])
        (
            m.directory / "targets" / layout.hashed_path(info.path, info.hashes["sha256"])
        ).write_bytes(data)
        forge_chain(
            m.directory,
            "stream-beta",
            lambda t: t.targets.update({"beta/releases.json": info}),
            role_keys=online(site, "stream-beta"),
            snapshot_keys=online(site, "snapshot"),
            timestamp_keys=online(site, "timestamp"),
        )
        host = client(m.url, tmp_path / "host", pinned(site))
        refused("wrong_stream", host.releases, "beta")


# --- key compromise -------------------------------------------------------------------------


def test_a_revoked_stream_key_signs_nothing_any_more(site: Site, tmp_path: Path) -> None:
    (old,) = online(site, "stream-stable")
    admin.add_key(site.tuf(), "stream-stable")
    admin.revoke(site.tuf(), "stream-stable", old.keyid)
    with mirror_of(site.root, tmp_path / "mirror") as m:
        host = client(m.url, tmp_path / "host", pinned(site))
        assert host.latest("stable", "node").version == "2"  # type: ignore[union-attr]
        path = "stable/node/9/node-9.squashfs.img"
        slip_in(site, m.directory, "stream-stable", path, [old])  # the leaked, revoked key
        again = client(m.url, tmp_path / "host")
        again.refresh()
        err = refused("unsigned", again.target, path)
        assert "stream-stable" in str(err)


def test_threshold_of_two_is_not_met_by_one_signature(site: Site, tmp_path: Path) -> None:
    admin.add_key(site.tuf(), "stream-stable", threshold=2)
    keys = online(site, "stream-stable")
    assert len(keys) == 2
    with mirror_of(site.root, tmp_path / "mirror") as m:
        host = client(m.url, tmp_path / "host", pinned(site))
        assert host.latest("stable", "node").version == "2"  # type: ignore[union-attr]
        path = "stable/node/9/node-9.squashfs.img"
        slip_in(site, m.directory, "stream-stable", path, keys[:1])  # one of the two keys leaked
        again = client(m.url, tmp_path / "host")
        again.refresh()
        refused("unsigned", again.target, path)


def test_rotated_root_is_followed_and_the_old_root_keys_are_powerless(
    site: Site, tmp_path: Path
) -> None:
    old_root_keys = site.root_keys.keys("root")
    admin.rotate(site.tuf(), "root", root_keys=site.root_keys)
    admin.rotate(site.tuf(), "timestamp", root_keys=site.root_keys)
    with mirror_of(site.root, tmp_path / "mirror") as m:
        host = client(m.url, tmp_path / "host", pinned(site))  # still pins root version 1
        assert host.latest("stable", "node").version == "2"  # type: ignore[union-attr]
        md = m.directory / "metadata"
        newest = site.tuf().root_version()
        assert newest == 3  # rotating root, then the timestamp key (named in the root)
        # the old root keys sign a root 4 that hands the timestamp role to the attacker
        root = read_md(md / f"{newest}.root.json")
        attacker = CryptoSigner.generate_ed25519()
        root.signed.roles["timestamp"].keyids = [attacker.public_key.keyid]
        root.signed.keys[attacker.public_key.keyid] = attacker.public_key
        root.signed.version = newest + 1
        write_md(root, md / f"{newest + 1}.root.json", old_root_keys)
        refused("unsigned", client(m.url, tmp_path / "host").refresh)


def test_rotated_timestamp_key_cannot_sign_any_more(site: Site, tmp_path: Path) -> None:
    old = online(site, "timestamp")
    admin.rotate(site.tuf(), "timestamp", root_keys=site.root_keys)
    with mirror_of(site.root, tmp_path / "mirror") as m:
        ts = read_md(m.directory / "metadata" / "timestamp.json")
        ts.signed.version += 1
        write_md(ts, m.directory / "metadata" / "timestamp.json", old)
        refused("unsigned", client(m.url, tmp_path / "host", pinned(site)).refresh)
