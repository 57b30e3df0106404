"""Contract tests: every registered message validates its golden example, rejects bad bodies by
field name, survives fedora-messaging's own serialisation, and its exported schema is current."""

from __future__ import annotations

import copy
import json
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fedora_messaging import exceptions as fm_exceptions
from fedora_messaging import message as fm_message

from imgline.schemas import messages as m
from imgline.schemas import payloads as p

pytestmark = pytest.mark.unit

SCHEMAS_DIR = Path(__file__).resolve().parents[1]
EXAMPLES = SCHEMAS_DIR / "examples"
JSON_DIR = SCHEMAS_DIR / "json"


def example(cls: type[m.ImglineMessage[Any]]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (EXAMPLES / f"{m.entry_point_name(cls)}.json").read_text(encoding="utf-8")
    )
    return data


def registered() -> dict[str, type[fm_message.Message]]:
    return {ep.name: ep.load() for ep in entry_points(group="fedora.messages")}


def test_every_message_class_is_registered_under_its_topic_name() -> None:
    eps = registered()
    for cls in m.ALL_MESSAGES:
        assert eps[m.entry_point_name(cls)] is cls
        assert fm_message.get_name(cls) == m.entry_point_name(cls)
    ours = {name for name in eps if name.startswith("imgline.")}
    assert ours == {m.entry_point_name(cls) for cls in m.ALL_MESSAGES}


@pytest.mark.parametrize("name", sorted(f"{m.entry_point_name(c)}" for c in m.ALL_MESSAGES))
def test_registered_entry_point_validates_its_golden_example(name: str) -> None:
    cls = registered()[name]
    assert issubclass(cls, m.ImglineMessage)
    msg = cls(body=example(cls), topic=f"imgline.{cls.topic_suffix}")
    msg.validate()
    fm_message.Message.validate(msg)  # fedora-messaging's own check, with the exported schema
    assert msg.payload.schema_version == "1.0"  # golden examples stay at 1.0: still read
    assert msg.summary and msg.summary != msg.topic
    assert msg.summary in str(msg)
    assert msg.app_name == "imgline"


@pytest.mark.parametrize("cls", m.ALL_MESSAGES, ids=lambda c: c.topic_suffix)
def test_round_trip_through_fedora_messaging_serialisation(
    cls: type[m.ImglineMessage[Any]],
) -> None:
    payload = cls.payload_model.model_validate(example(cls))
    msg = cls.from_payload(payload, prefix="acme")
    assert msg.topic == f"acme.{cls.routing_topic(payload)}"
    assert msg.topic.startswith(f"acme.{cls.topic_suffix}")
    (back,) = fm_message.loads(fm_message.dumps(msg))
    assert type(back) is cls
    assert back == msg
    assert back.payload == payload
    # and through the path a consumer takes: routing key, AMQP properties, raw bytes
    wire = fm_message.get_message(msg.topic, msg._properties, msg._encoded_body)
    assert type(wire) is cls
    assert wire.payload == payload


def test_only_image_published_carries_more_than_its_topic_in_the_routing_key() -> None:
    extended = {
        cls
        for cls in m.ALL_MESSAGES
        if cls.routing_topic(cls.payload_model.model_validate(example(cls))) != cls.topic_suffix
    }
    assert extended == {m.ImagePublishedV1}


def test_image_published_routing_key_carries_the_stream() -> None:
    body = example(m.ImagePublishedV1)
    for stream in ("stable", "beta.canary"):
        payload = p.ImagePublished.model_validate({**body, "stream": stream})
        msg = m.ImagePublishedV1.from_payload(payload, prefix="acme")
        assert msg.topic == f"acme.image.published.{stream}"
        assert m.ImagePublishedV1.binding(stream) == f"image.published.{stream}"
        # consumers decode by the schema header, whatever the key carries
        wire = fm_message.get_message(msg.topic, msg._properties, msg._encoded_body)
        assert type(wire) is m.ImagePublishedV1
        assert wire.payload == payload
    assert m.ImagePublishedV1.binding() == "image.published.#"


@pytest.mark.parametrize("cls", m.ALL_MESSAGES, ids=lambda c: c.topic_suffix)
def test_missing_required_field_is_named(cls: type[m.ImglineMessage[Any]]) -> None:
    body = example(cls)
    required = cls.body_schema["required"]
    victim = next(f for f in required if f not in ("schema_version", "emitted_at"))
    del body[victim]
    msg = cls(body=body, topic=f"imgline.{cls.topic_suffix}")
    with pytest.raises(Exception, match=victim):
        msg.validate()


def bad(cls: type[m.ImglineMessage[Any]], mutate: Any) -> str:
    body = example(cls)
    mutate(body)
    msg = cls(body=body, topic=f"imgline.{cls.topic_suffix}")
    props = copy.deepcopy(msg._properties)
    with pytest.raises(fm_exceptions.ValidationError) as info:
        fm_message.get_message(msg.topic, props, json.dumps(body).encode())
    return str(info.value)


def test_invalid_nested_field_is_named_by_path() -> None:
    text = bad(m.ImageBuiltV1, lambda b: b["artifact"].update(sha256="nothex"))
    assert "sha256" in text


def test_field_rule_only_the_model_knows_is_named() -> None:
    def lie(b: dict[str, Any]) -> None:
        b["results"][0]["status"] = "failed"

    text = bad(m.ImageTestedV1, lie)
    assert "passed is true but checks failed: integrity.sha256" in text


def test_naive_timestamp_is_rejected() -> None:
    text = bad(m.HostUpgradedV1, lambda b: b.update(emitted_at="2026-11-23T10:00:00"))
    assert "emitted_at" in text and "UTC" in text


def test_unknown_field_in_current_version_is_rejected() -> None:
    text = bad(m.ImagePublishedV1, lambda b: b.update(signer="bob"))
    assert "signer" in text


def test_newer_compatible_minor_version_is_accepted_and_extra_fields_dropped() -> None:
    body = example(m.ImageTestedV1)
    body["schema_version"] = "1.7"
    body["shard"] = 3
    body["image"]["artifact"]["zchunk"] = True
    body["results"][0]["attachments"] = ["console.log"]
    msg = m.ImageTestedV1(body=body, topic="imgline.image.tested")
    wire = fm_message.get_message(msg.topic, msg._properties, json.dumps(body).encode())
    payload = wire.payload
    assert isinstance(payload, p.ImageTested)
    assert payload.image.artifact.sha256 == body["image"]["artifact"]["sha256"]
    assert payload.results[0].name == "integrity.sha256"


def test_newer_minor_version_still_checks_known_fields() -> None:
    def newer_but_broken(b: dict[str, Any]) -> None:
        b["schema_version"] = "1.3"
        b["image_size"] = -1

    assert "image_size" in bad(m.ImagePublishedV1, newer_but_broken)


def test_other_major_version_is_refused_with_advice() -> None:
    text = bad(m.HostRolledBackV1, lambda b: b.update(schema_version="2.0"))
    assert "major version 2" in text and "upgrade imgline-schemas" in text


def test_build_id_is_content_addressed_and_checked() -> None:
    base = example(m.BuildRequestedV1)
    again = dict(base, request_id="other-request", emitted_at="2026-11-24T00:00:00Z")
    assert p.BuildRequested.model_validate(again).build_id == base["build_id"]
    other = dict(base, stream="testing")
    del other["build_id"]
    assert p.BuildRequested.model_validate(other).build_id != base["build_id"]
    text = bad(m.BuildRequestedV1, lambda b: b.update(stream="testing"))
    assert "does not match the request's content" in text


def test_inline_source_is_accepted() -> None:
    req = p.BuildRequested(
        request_id="cli-1", source=p.InlineSource(kickstart="lang en_US.UTF-8\n"), name="node"
    )
    msg = m.BuildRequestedV1.from_payload(req)
    msg.validate()
    assert "inline kickstart" in msg.summary


def test_from_payload_refuses_the_wrong_payload_type() -> None:
    payload = p.ImageBuilt.model_validate(example(m.ImageBuiltV1))
    with pytest.raises(TypeError, match="BuildFailed"):
        m.BuildFailedV1.from_payload(payload)  # type: ignore[arg-type]


def test_exported_json_schemas_are_current() -> None:
    on_disk = {path.name: path.read_text(encoding="utf-8") for path in JSON_DIR.glob("*.json")}
    wanted = m.exported_schemas()
    stale = sorted(n for n in wanted if on_disk.get(n) != wanted[n])
    extra = sorted(set(on_disk) - set(wanted))
    assert not stale and not extra, (
        f"schemas/json is stale ({stale}, extra {extra}): "
        "run 'uv run python -m imgline.schemas.export schemas/json'"
    )


def test_wire_schema_accepts_a_newer_minor_version_for_non_python_consumers() -> None:
    body = example(m.ImageBuiltV1)
    body.update(schema_version="1.4", shard=2)
    body["artifact"]["zchunk"] = True
    jsonschema.validate(body, m.ImageBuiltV1.body_schema)
    body["artifact"]["size"] = "big"
    with pytest.raises(jsonschema.exceptions.ValidationError, match="'big' is not of type"):
        jsonschema.validate(body, m.ImageBuiltV1.body_schema)


def test_bad_headers_are_named() -> None:
    msg = m.HostUpgradedV1(body=example(m.HostUpgradedV1), topic="imgline.host.upgraded")
    msg._headers["fedora_messaging_severity"] = "loud"
    with pytest.raises(jsonschema.exceptions.ValidationError, match="fedora_messaging_severity"):
        msg.validate()
