"""Push messages shaped like the ones forges put on the bus, with the headers fedora-messaging
sends. Pagure's ``git.receive`` follows pagure_messages' ``GitReceiveV1`` and Pagure's own
default hook (``repo`` is the project's public JSON); dist-git's per-commit ``git.receive`` follows
Fedora's fedmsg git hook (one message per new commit, ``stats.files`` from the commit's diff)."""

from __future__ import annotations

import json
from typing import Any

END = "edc02fbb423d3957d174c571896418f29fa169b8"
START = "b5e65479e4bd91554d8d3084bf378ffb6e4ef605"
OLD = "7924676a7b6d1f8f3296b359d008991ecf0820f5"
REV = "c1c7de158fa72de5bd279daaaac9f75d0b3e65cd"
MESSAGE_ID = "5b3d9e08-5e14-4bf2-83df-9f8fa8323f01"

PAGURE_TOPIC = "io.pagure.prod.pagure.git.receive"
FEDORA_PAGURE_TOPIC = "org.fedoraproject.prod.pagure.git.receive"
DISTGIT_TOPIC = "org.fedoraproject.prod.git.receive"


def pagure_project(**over: Any) -> dict[str, Any]:
    """``Project.to_json(public=True)`` as Pagure sends it in every message."""
    return {
        "id": 3719,
        "name": "node-os",
        "fullname": "fedora-iot/node-os",
        "url_path": "fedora-iot/node-os",
        "full_url": "https://pagure.io/fedora-iot/node-os",
        "description": "Kickstarts of the node image",
        "namespace": "fedora-iot",
        "parent": None,
        "date_created": "1589293474",
        "date_modified": "1700000000",
        "user": {
            "name": "jsmith",
            "fullname": "Jane Smith",
            "url_path": "user/jsmith",
            "full_url": "https://pagure.io/user/jsmith",
        },
        "access_users": {"owner": ["jsmith"], "admin": [], "commit": ["pingou"], "ticket": []},
        "access_groups": {"admin": [], "commit": [], "ticket": []},
        "tags": ["iot"],
        "priorities": {},
        "custom_keys": [],
        "close_status": [],
        "milestones": {},
        **over,
    }


def pagure_receive(**over: Any) -> dict[str, Any]:
    """A ``pagure.git.receive`` body: one pushed branch, the range start..end, no file list."""
    return {
        "agent": "jsmith",
        "forced": False,
        "repo": pagure_project(),
        "old_commit": OLD,
        "branch": "main",
        "authors": [
            {"name": "jsmith", "fullname": "Jane Smith", "url_path": "user/jsmith"},
            {"name": None, "fullname": "Someone Else", "url_path": None},
        ],
        "total_commits": 3,
        "start_commit": START,
        "end_commit": END,
        **over,
    }


def distgit_receive(**over: Any) -> dict[str, Any]:
    """A dist-git ``git.receive`` body: one commit, with the files its diff touched."""
    commit = {
        "name": "Emmanuel Seyman",
        "email": "emmanuel@seyman.fr",
        "username": "eseyman",
        "summary": "Update to 0.40",
        "message": "Update to 0.40\n",
        "stats": {
            "files": {
                "node-os.spec": {"deletions": 2, "additions": 5, "lines": 7},
                "kickstarts/node.ks": {"deletions": 0, "additions": 1, "lines": 1},
            },
            "total": {"deletions": 2, "files": 2, "additions": 6, "lines": 8},
        },
        "rev": REV,
        "namespace": "rpms",
        "repo": "node-os",
        "branch": "rawhide",
        "path": "/srv/git/repositories/rpms/node-os.git",
        "agent": "eseyman",
        "seen": False,
        **over,
    }
    return {"commit": commit}


def fm_headers(schema: str) -> dict[str, Any]:
    """The headers fedora-messaging publishes with."""
    return {
        "fedora_messaging_schema": schema,
        "fedora_messaging_severity": 20,
        "fedora_messaging_user_jsmith": True,
        "sent-at": "2024-09-18T13:31:56+00:00",
        "priority": 0,
    }


def encoded(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode("utf-8")
