"""fedora-messaging classes, one per topic, each wrapping its pydantic payload model.

``body_schema`` is generated from the model. It is the tolerant wire contract (it lets a newer
minor version add fields); ``validate`` then applies the model itself, which is strict for the
versions it knows, and reports the offending field by its path.
"""

from __future__ import annotations

import copy
import json
from typing import Any, ClassVar, Generic, TypeVar

import jsonschema
import pydantic
from fedora_messaging import message as fm_message

from imgline.schemas import payloads as p

DEFAULT_PREFIX = "imgline"
APP_NAME = "imgline"

P = TypeVar("P", bound=p.Payload)


def _tolerant(schema: Any) -> Any:
    """Drop ``additionalProperties: false`` everywhere, so newer minor versions pass jsonschema."""
    if isinstance(schema, dict):
        return {
            key: _tolerant(value)
            for key, value in schema.items()
            if not (key == "additionalProperties" and value is False)
        }
    if isinstance(schema, list):
        return [_tolerant(item) for item in schema]
    return schema


def wire_schema(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """The JSON schema (draft 2020-12) published for ``model`` and used as ``body_schema``."""
    schema = _tolerant(model.model_json_schema(mode="validation"))
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://imgline.invalid/schemas/{model.topic}.v1.json"  # type: ignore[attr-defined]
    return dict(schema)


def describe_validation_error(exc: pydantic.ValidationError) -> str:
    """One line a producer can act on: each failing field by its dotted path, with the reason."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(loc) for loc in err["loc"]) or "<body>"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


_HEADERS_VALIDATOR = jsonschema.validators.validator_for(fm_message.Message.headers_schema)(
    fm_message.Message.headers_schema
)


class ImglineMessage(fm_message.Message, Generic[P]):
    """Shared display and decoding for every imgline message; subclasses name their payload."""

    payload_model: ClassVar[type[p.Payload]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        model = cls.__dict__.get("payload_model")
        if model is not None:
            cls.body_schema = wire_schema(model)
            cls.topic_suffix = model.topic

    topic_suffix: ClassVar[str] = ""

    @classmethod
    def routing_topic(cls, payload: P) -> str:
        """The routing key after the prefix; subclasses append what consumers select on."""
        return cls.topic_suffix

    @classmethod
    def binding(cls, stream: str | None = None) -> str:
        """What a queue binds (after the prefix) to get this class's messages; ``stream``
        narrows it only where the routing key carries one (``image.published``)."""
        return cls.topic_suffix

    @classmethod
    def from_payload(cls, payload: P, prefix: str = DEFAULT_PREFIX) -> ImglineMessage[P]:
        """A message ready to publish with routing key ``<prefix>.<routing_topic(payload)>``.

        Consumers find the class by the schema header, never by the key, so a key that carries
        more than the topic (``image.published.<stream>``) still decodes.
        """
        if not isinstance(payload, cls.payload_model):
            raise TypeError(f"{cls.__name__} carries {cls.payload_model.__name__}, not {payload!r}")
        body = json.loads(payload.model_dump_json())
        return cls(body=body, topic=f"{prefix}.{cls.routing_topic(payload)}")

    def validate(self) -> None:
        """Check the headers as fedora-messaging does, and the body with the payload model.

        Same checks as ``Message.validate``, minus its cost: that re-checks the JSON schema
        itself on every call (tens of ms for these schemas). Here the header schema is compiled
        once, and the body goes through the pydantic model, which is stricter than the tolerant
        wire schema it generates. Errors are ``jsonschema`` errors, as fedora-messaging expects,
        and name the field by its path.
        """
        error = jsonschema.exceptions.best_match(_HEADERS_VALIDATOR.iter_errors(self._headers))
        if error is not None:
            where = error.json_path.removeprefix("$.").removeprefix("$") or "<headers>"
            raise jsonschema.exceptions.ValidationError(
                f"{self.topic_suffix} headers are invalid: {where}: {error.message}"
            )
        self._payload = self._parse()

    def _parse(self) -> p.Payload:
        try:
            return self.payload_model.model_validate(self.body)
        except pydantic.ValidationError as exc:
            raise jsonschema.exceptions.ValidationError(
                f"{self.topic_suffix} is invalid: {describe_validation_error(exc)}"
            ) from exc

    @property
    def payload(self) -> P:
        """The typed body (validated once, then cached)."""
        cached = getattr(self, "_payload", None)
        if cached is None:
            cached = self._payload = self._parse()
        return cached  # type: ignore[return-value]

    @property
    def app_name(self) -> str:
        return APP_NAME

    @property
    def build_id(self) -> str | None:
        """The correlation id every log line carries (host messages have none)."""
        value = self.body.get("build_id")
        return value if isinstance(value, str) else None

    def _fields(self) -> list[tuple[str, str]]:
        out = []
        for key, value in self.body.items():
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            out.append((key, text))
        return out

    def __str__(self) -> str:
        width = max((len(k) for k, _ in self._fields()), default=0)
        lines = [self.summary, ""]
        lines += [f"{key.ljust(width)}  {value}" for key, value in self._fields()]
        return "\n".join(lines)


def _short(build_id: str | None) -> str:
    return (build_id or "?")[:12]


class BuildRequestedV1(ImglineMessage[p.BuildRequested]):
    """``build.requested``: build this kickstart into an image."""

    payload_model = p.BuildRequested

    @property
    def agent_name(self) -> str | None:
        value = self.body.get("requested_by")
        return value if isinstance(value, str) else None

    @property
    def summary(self) -> str:
        b = self.body
        src = b.get("source", {})
        where = (
            f"{src.get('url')}@{src.get('commit') or src.get('ref')}:{src.get('kickstart_path')}"
            if src.get("kind") == "git"
            else "an inline kickstart"
        )
        return f"build of {b.get('name')} ({b.get('stream')}) requested from {where}"


class BuildFailedV1(ImglineMessage[p.BuildFailed]):
    """``build.failed``: a build ended without an image."""

    payload_model = p.BuildFailed

    @property
    def summary(self) -> str:
        b = self.body
        line = f" at kickstart line {b['kickstart_line']}" if b.get("kickstart_line") else ""
        what = f"build {_short(self.build_id)} of {b.get('name')}"
        return f"{what} failed in {b.get('stage')}{line}: {b.get('error')}"


class ImageBuiltV1(ImglineMessage[p.ImageBuilt]):
    """``image.built``: an image is in the artefact store."""

    payload_model = p.ImageBuilt

    @property
    def summary(self) -> str:
        b = self.body
        size = b.get("artifact", {}).get("size", 0)
        mib = size / 2**20
        image = f"{b.get('name')}-{b.get('version')}"
        return f"image {image} built ({mib:.1f} MiB, build {_short(self.build_id)})"


class ImageTestedV1(ImglineMessage[p.ImageTested]):
    """``image.tested``: the tester's verdict."""

    payload_model = p.ImageTested

    @property
    def summary(self) -> str:
        b = self.body
        img = b.get("image", {})
        results = b.get("results", [])
        ok = sum(1 for r in results if r.get("status") == "passed")
        verdict = "passed" if b.get("passed") else "FAILED"
        image = f"{img.get('name')}-{img.get('version')}"
        return f"image {image} {verdict} tests ({ok}/{len(results)} checks passed)"


class ImageRejectedV1(ImglineMessage[p.ImageRejected]):
    """``image.rejected``: the publisher refused an image."""

    payload_model = p.ImageRejected

    @property
    def summary(self) -> str:
        img = self.body.get("image", {})
        return f"image {img.get('name')}-{img.get('version')} rejected: {self.body.get('reason')}"


class ImagePublishedV1(ImglineMessage[p.ImagePublished]):
    """``image.published.<stream>``: an image is in the signed repository.

    The stream is in the routing key so that the broker, not every host, filters: a host binds
    its queue to its own stream and never hears of the others.
    """

    payload_model = p.ImagePublished

    @classmethod
    def routing_topic(cls, payload: p.ImagePublished) -> str:
        return cls.binding(payload.stream)

    @classmethod
    def binding(cls, stream: str | None = None) -> str:
        """What a queue binds (after the prefix): one stream's releases, or, without a stream,
        every stream's (``image.published.#``: a stream name may itself contain dots)."""
        return f"{cls.topic_suffix}.{stream if stream is not None else '#'}"

    @property
    def summary(self) -> str:
        b = self.body
        return f"image {b.get('name')}-{b.get('version')} published to stream {b.get('stream')}"


class HostUpgradedV1(ImglineMessage[p.HostUpgraded]):
    """``host.upgraded``: a host runs the new image and it is healthy."""

    payload_model = p.HostUpgraded

    @property
    def summary(self) -> str:
        b = self.body
        return f"host {b.get('host_id')} upgraded {b.get('from_version')} -> {b.get('to_version')}"


class HostUpgradeFailedV1(ImglineMessage[p.HostUpgradeFailed]):
    """``host.upgrade.failed``: applying failed; the host still boots its previous layer."""

    payload_model = p.HostUpgradeFailed

    @property
    def summary(self) -> str:
        b = self.body
        host = f"host {b.get('host_id')}"
        return f"{host} failed to apply {b.get('to_version')} at {b.get('step')}: {b.get('error')}"


class HostRolledBackV1(ImglineMessage[p.HostRolledBack]):
    """``host.rolled_back``: the new layer failed its health check; the old one boots again."""

    payload_model = p.HostRolledBack

    @property
    def summary(self) -> str:
        b = self.body
        host = f"host {b.get('host_id')}"
        return (
            f"{host} rolled back {b.get('to_version')} -> {b.get('from_version')}: {b.get('error')}"
        )


ALL_MESSAGES: tuple[type[ImglineMessage[Any]], ...] = (
    BuildRequestedV1,
    BuildFailedV1,
    ImageBuiltV1,
    ImageTestedV1,
    ImageRejectedV1,
    ImagePublishedV1,
    HostUpgradedV1,
    HostUpgradeFailedV1,
    HostRolledBackV1,
)

BY_TOPIC: dict[str, type[ImglineMessage[Any]]] = {m.topic_suffix: m for m in ALL_MESSAGES}


def entry_point_name(cls: type[ImglineMessage[Any]]) -> str:
    """``imgline.<topic>.v1``: the name registered in ``fedora.messages``."""
    return f"imgline.{cls.topic_suffix}.v1"


def exported_schemas() -> dict[str, str]:
    """File name → JSON text of every wire schema, as kept in ``schemas/json/``."""
    return {
        f"{entry_point_name(cls)}.json": json.dumps(cls.body_schema, indent=2, sort_keys=True)
        + "\n"
        for cls in ALL_MESSAGES
    }


def copy_body(msg: fm_message.Message) -> dict[str, Any]:
    """A deep copy of a message body (bodies are shared dicts in fedora-messaging)."""
    return copy.deepcopy(dict(msg.body))
