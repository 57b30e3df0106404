"""The webhook's decisions: what each kind of request is answered, and what is sent on."""

from __future__ import annotations

import json

import pytest
from forgepayloads import AFTER, SECRET, gitea_push, github_push, signed
from prometheus_client import CollectorRegistry

from imgline.core.errors import BrokerUnavailableError
from imgline.schemas import payloads as p
from imgline.trigger.domain.rules import Seen, load_rules
from imgline.trigger.webhook import RESULTS, Webhook, WebhookMetrics

pytestmark = pytest.mark.unit

RULES = load_rules(
    """
[[rule]]
repository = "acme/node-os"
url = "https://git.example.com/acme/node-os.git"
name = "node"
kickstart_path = "kickstarts/node.ks"
"""
)


def hook(sent: list[p.BuildRequested], fail: bool = False) -> Webhook:
    def publish(req: p.BuildRequested) -> None:
        if fail:
            raise BrokerUnavailableError("broker down")
        sent.append(req)

    secrets = {"github": SECRET, "gitea": SECRET}
    return Webhook(RULES, secrets, Seen(100, 3600, lambda: 0.0), publish)  # type: ignore[arg-type]


def test_a_push_is_requested_once_and_a_redelivery_is_not() -> None:
    sent: list[p.BuildRequested] = []
    webhook = hook(sent)
    headers, body = signed("gitea", gitea_push())
    first = webhook.handle(headers, body)
    assert first.status == 202 and first.body["requested"] == [sent[0].build_id]
    assert sent[0].source.kind == "git" and sent[0].source.commit == AFTER
    again = webhook.handle({**headers, "X-Gitea-Delivery": "another"}, body)
    assert again.status == 200 and again.body["already_requested"] == [sent[0].build_id]
    assert len(sent) == 1


def test_a_bad_signature_sends_nothing_and_says_little() -> None:
    sent: list[p.BuildRequested] = []
    headers, body = signed("github", github_push(), "wrong")
    answer = hook(sent).handle(headers, body)
    assert (answer.status, answer.body, sent) == (401, {"error": "signature"}, [])
    headers, body = signed("gitlab", {"object_kind": "push"})  # no gitlab secret configured
    assert hook(sent).handle(headers, body).status == 401


def test_a_push_the_bus_did_not_take_is_let_through_on_the_retry() -> None:
    sent: list[p.BuildRequested] = []
    headers, body = signed("gitea", gitea_push())
    webhook = hook(sent, fail=True)
    assert webhook.handle(headers, body).status == 503
    webhook.publish = sent.append
    assert webhook.handle(headers, body).status == 202 and len(sent) == 1


def test_events_that_build_nothing_are_answered_200() -> None:
    sent: list[p.BuildRequested] = []
    headers, body = signed("github", github_push(ref="refs/tags/v1"))
    assert hook(sent).handle(headers, body).status == 200
    headers, body = signed("github", github_push(repository={"full_name": "other/repo"}))
    answer = hook(sent).handle(headers, body)
    assert answer.status == 200 and answer.body["rules_matched"] == 0
    headers, body = signed("gitea", gitea_push())
    body = json.dumps({"ref": 5}).encode()
    headers["X-Gitea-Signature"] = signed("gitea", {"ref": 5})[0]["X-Gitea-Signature"]
    assert hook(sent).handle(headers, body).status == 400
    assert sent == []


def test_every_answer_is_counted_by_forge_and_result() -> None:
    registry = CollectorRegistry()
    sent: list[p.BuildRequested] = []
    webhook = hook(sent)
    webhook.metrics = WebhookMetrics(registry)
    headers, body = signed("gitea", gitea_push())
    webhook.handle(headers, body)
    webhook.handle(headers, body)
    webhook.handle(*signed("github", github_push(), "wrong"))
    webhook.handle({"X-Whatever": "1"}, b"{}")
    webhook.handle(*signed("github", github_push(ref="refs/tags/v1")))

    def count(forge: str, result: str) -> float | None:
        return registry.get_sample_value(
            "imgline_webhooks_total", {"forge": forge, "result": result}
        )

    assert count("gitea", "requested") == 1
    assert count("gitea", "repeated") == 1
    assert count("github", "refused") == 1
    assert count("unknown", "invalid") == 1
    assert count("github", "no_build") == 1
    assert {r for r in RESULTS} >= {"requested", "repeated", "refused", "invalid", "no_build"}
