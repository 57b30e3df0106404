"""Push events of GitHub, GitLab and Gitea/Forgejo: is it signed, and what was pushed.

Pure: headers and body in, a ``Push`` out. Each forge signs its own way: GitHub and
Gitea/Forgejo send an HMAC-SHA256 of the body under the webhook's secret
(``X-Hub-Signature-256: sha256=<hex>``, ``X-Gitea-Signature``/``X-Forgejo-Signature: <hex>``);
GitLab sends the secret itself (``X-Gitlab-Token``). A request is checked before its body is
parsed, so nothing an unauthenticated sender wrote is ever read. docs/architecture.md, "Trigger".
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from imgline.trigger.errors import PayloadError, SignatureError

#: The forges that send signed webhooks.
Forge = Literal["github", "gitlab", "gitea", "forgejo"]
FORGES: tuple[Forge, ...] = ("github", "gitlab", "gitea", "forgejo")
#: Where a push can come from: a webhook forge, or Pagure (and Fedora dist-git), which
#: announces pushes on a message bus instead (``imgline.trigger.domain.busevents``).
Origin = Literal["github", "gitlab", "gitea", "forgejo", "pagure"]

#: The event header of each forge, and the value it has for a push. Forgejo also sends
#: Gitea's headers, so it is looked for first.
_EVENT_HEADERS: tuple[tuple[Forge, str, str], ...] = (
    ("github", "x-github-event", "push"),
    ("gitlab", "x-gitlab-event", "Push Hook"),
    ("forgejo", "x-forgejo-event", "push"),
    ("gitea", "x-gitea-event", "push"),
)
_DELIVERY_HEADERS: dict[Forge, tuple[str, ...]] = {
    "github": ("x-github-delivery",),
    "gitlab": ("x-gitlab-event-uuid", "idempotency-key"),
    "gitea": ("x-gitea-delivery",),
    "forgejo": ("x-forgejo-delivery", "x-gitea-delivery"),
}
_ZERO = re.compile(r"^0+$")
_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
#: What a branch name may hold here: git's rules, and nothing a shell or an option parser
#: could take for something else (no leading "-", no spaces or control characters).
_BRANCH = re.compile(r"^(?!-)(?!.*\.\.)(?!.*//)[A-Za-z0-9._/+-]{1,200}(?<![./])$")
#: A repository's name as forges spell it (GitHub, GitLab, Gitea and Pagure allow no more:
#: Pagure's ``forks/<user>/rpms/gcc-c++`` is the widest), never starting with "-" or "/".
_REPOSITORY = re.compile(r"^(?![-/.])(?!.*\.\.)(?!.*//)[A-Za-z0-9._/+~-]{1,255}(?<!/)$")


class Push(BaseModel):
    """One push to one branch, as every forge describes it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    forge: Origin
    repository: str = Field(
        min_length=1, max_length=255, description="owner/name, as the forge says"
    )
    branch: str
    commit: str = Field(pattern=_SHA.pattern, description="the branch's new head")
    changed_paths: frozenset[str] = frozenset()
    #: False when the forge left commits out of the event (GitLab lists 20 at most), or
    #: names no files at all (Pagure's bus messages): path rules then match, so that a push
    #: is never missed
    paths_complete: bool = True
    delivery: str | None = None

    @field_validator("branch")
    @classmethod
    def _branch(cls, value: str) -> str:
        if not _BRANCH.fullmatch(value):
            raise ValueError(f"branch name {value[:80]!r} is not one imgline builds")
        return value

    @field_validator("repository")
    @classmethod
    def _repository(cls, value: str) -> str:
        if not _REPOSITORY.fullmatch(value):
            raise ValueError(f"repository name {value[:80]!r} is not a forge's owner/name")
        return value


def make_push(**fields: Any) -> Push:
    """A ``Push`` of fields read from an event; ``PayloadError`` naming what is wrong, so a
    caller never meets pydantic's exceptions for what a sender wrote."""
    try:
        return Push.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)
        )
        raise PayloadError(f"not a push imgline can use: {problems}"[:2000]) from exc


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def detect(headers: Mapping[str, str]) -> tuple[Forge, str]:
    """The forge that sent the request, and its event name; PayloadError when none did."""
    for forge, header, _ in _EVENT_HEADERS:
        value = _header(headers, header)
        if value is not None:
            return forge, value
    raise PayloadError(
        "not a webhook of GitHub, GitLab, Gitea or Forgejo (no X-GitHub-Event, X-Gitlab-Event, "
        "X-Forgejo-Event or X-Gitea-Event header)"
    )


def forwarded_event(forge: Forge, headers: Mapping[str, str]) -> str:
    """The event name in the headers of a webhook a relay forwarded; a push when it kept none."""
    header, push = next((h, v) for f, h, v in _EVENT_HEADERS if f == forge)
    return _header(headers, header) or push


def _hmac_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(forge: Forge, headers: Mapping[str, str], body: bytes, secret: str) -> None:
    """Raise ``SignatureError`` unless ``body`` is signed with ``secret`` the way ``forge``
    signs (compared in constant time)."""
    if not secret:
        raise SignatureError(f"no webhook secret is configured for {forge}: every event is refused")
    if forge == "github":
        given = _header(headers, "x-hub-signature-256") or ""
        expected = "sha256=" + _hmac_hex(secret, body)
    elif forge == "gitlab":
        given = _header(headers, "x-gitlab-token") or ""
        expected = secret
    else:
        names = (
            ("x-forgejo-signature", "x-gitea-signature")
            if forge == "forgejo"
            else ("x-gitea-signature",)
        )
        given = next((v for n in names if (v := _header(headers, n))), "")
        expected = _hmac_hex(secret, body)
    if not given:
        raise SignatureError(f"the {forge} event has no signature header")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise SignatureError(f"the {forge} event's signature does not match the secret")


def _paths(commits: Any) -> tuple[frozenset[str], bool]:
    paths: set[str] = set()
    if not isinstance(commits, list):
        return frozenset(), False
    for commit in commits:
        if not isinstance(commit, dict):
            return frozenset(), False
        for key in ("added", "removed", "modified"):
            names = commit.get(key) or []
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise PayloadError(f"commit {key} is not a list of paths")
            paths.update(names)
    return frozenset(paths), True


def json_object(body: bytes, what: str) -> dict[str, Any]:
    """``body`` as a JSON object, or a ``PayloadError`` saying the ``what`` is not one."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"the {what} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise PayloadError(f"the {what} is not a JSON object")
    return data


def parse(forge: Forge, event: str, headers: Mapping[str, str], body: bytes) -> Push | None:
    """The push a verified event describes; None for an event that is not a push to a branch
    (a ping, a tag, a deleted branch), which needs no build."""
    wanted = next(value for f, _, value in _EVENT_HEADERS if f == forge)
    if event != wanted:
        return None
    data = json_object(body, f"{forge} push event")
    ref = data.get("ref")
    after = (
        data.get("after") if forge != "gitlab" else data.get("checkout_sha") or data.get("after")
    )
    if not isinstance(ref, str) or not isinstance(after, str):
        raise PayloadError(f"the {forge} push event has no ref or no new commit")
    if not ref.startswith("refs/heads/") or _ZERO.match(after) or data.get("deleted") is True:
        return None  # a tag, or a branch deleted
    branch = ref.removeprefix("refs/heads/")
    if not _BRANCH.match(branch):
        raise PayloadError(f"branch name {branch[:80]!r} is not one imgline builds")
    if not _SHA.match(after):
        raise PayloadError(f"the {forge} push event's commit {after[:80]!r} is not a sha")
    repo = data.get("project") if forge == "gitlab" else data.get("repository")
    name = (repo or {}).get("path_with_namespace" if forge == "gitlab" else "full_name")
    if not isinstance(name, str) or not name:
        raise PayloadError(f"the {forge} push event names no repository")
    paths, complete = _paths(data.get("commits"))
    if forge == "gitlab" and isinstance(data.get("total_commits_count"), int):
        complete = complete and data["total_commits_count"] <= len(data.get("commits") or [])
    delivery = next((v for h in _DELIVERY_HEADERS[forge] if (v := _header(headers, h))), None)
    return make_push(
        forge=forge,
        repository=name,
        branch=branch,
        commit=after,
        changed_paths=paths,
        paths_complete=complete,
        delivery=delivery[:128] if delivery else None,
    )
