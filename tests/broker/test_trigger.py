"""A push to a bare git repository becomes exactly one pinned ``build.requested``: the real
post-receive hook of deploy/git, the trigger service as its own process, a private broker.
A redelivered push asks for nothing more, a push outside the rule's paths asks for nothing,
and an event with a wrong signature is refused with 401 and emits nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from bushelpers import post, service_process

from imgline.core.broker import free_port
from imgline.core.gitutil import commit_files, git

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parents[2]
SECRET = "a-webhook-secret-of-some-length"


def wait_healthy(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the trigger exited"
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the trigger never answered")


def test_a_push_to_a_bare_repository_requests_one_pinned_build(
    amqp_url: str, tmp_path: Path
) -> None:
    bare = tmp_path / "node-os.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    hook = bare / "hooks" / "post-receive"
    shutil.copy(REPO / "deploy" / "git" / "post-receive", hook)
    secret = tmp_path / "gitea.secret"
    secret.write_text(SECRET + "\n")
    port = free_port()
    hooks_url = f"http://127.0.0.1:{port}/hooks"
    rules = tmp_path / "rules.toml"
    rules.write_text(
        f"""
[[rule]]
repository = "node-os"
url = "file://{bare}"
branches = ["main"]
paths = ["kickstarts/**"]
name = "node"
stream = "stable"
kickstart_path = "kickstarts/node.ks"
"""
    )
    metrics_port = free_port()
    config = {
        "listen_port": str(port),
        "rules_file": str(rules),
        "secret_files.gitea": str(secret),
    }
    with service_process(
        "trigger",
        amqp_url,
        tmp_path,
        consumes=(),
        emits=("build.requested",),
        consumer_config=config,
        settings={"metrics_port": metrics_port},
    ) as svc:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", svc.proc)
        work = tmp_path / "work"
        commit = commit_files(work, {"kickstarts/node.ks": "lang en_US.UTF-8\n"}, "node")
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "IMGLINE_TRIGGER_URL": hooks_url,
            "IMGLINE_TRIGGER_SECRET": str(secret),
        }
        pushed = subprocess.run(
            ["git", "-C", str(work), "push", "-q", str(bare), "main"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert "imgline: main" in pushed.stderr and " 202 " in pushed.stderr, pushed.stderr
        event = svc.wait_event(30)
        assert event["name"] == "node" and event["stream"] == "stable"
        assert event["source"] == {
            "kind": "git",
            "url": f"file://{bare}",
            "ref": "main",
            "commit": commit,
            "kickstart_path": "kickstarts/node.ks",
        }

        # the same push delivered again (the hook run once more): nothing new is requested
        zero = "0" * 40
        again = subprocess.run(
            ["sh", str(hook)],
            input=f"{zero} {commit} refs/heads/main\n",
            cwd=bare,
            env={**env, "GIT_DIR": str(bare)},
            capture_output=True,
            text=True,
            check=True,
        )
        assert "already_requested" in again.stdout, again.stdout

        # a push that changes nothing under kickstarts/: no build
        later = commit_files(work, {"README.md": "docs\n"}, "docs")
        subprocess.run(
            ["git", "-C", str(work), "push", "-q", str(bare), "main"],
            env=env,
            check=True,
            capture_output=True,
        )

        # a forged event: refused, nothing emitted
        forged = json.dumps(
            {
                "ref": "refs/heads/main",
                "after": later,
                "repository": {"full_name": "node-os"},
                "commits": [{"modified": ["kickstarts/node.ks"]}],
            }
        ).encode()
        status = post(hooks_url, forged, {"X-Gitea-Event": "push", "X-Gitea-Signature": "0" * 64})
        assert status == 401
        time.sleep(2)  # what would have been published by now
        method, _, _ = svc.channel.basic_get(svc.watch, auto_ack=True)
        assert method is None, "more than one build.requested"

        # and a dashboard sees all of it
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as answer:
            text = answer.read().decode()
        assert 'imgline_webhooks_total{forge="gitea",result="requested"} 1.0' in text
        assert 'imgline_webhooks_total{forge="gitea",result="repeated"} 1.0' in text
        assert 'imgline_webhooks_total{forge="gitea",result="refused"} 1.0' in text
        published = r'published_total\{service="trigger",topic="[a-z.]*build\.requested"\} 1\.0'
        assert re.search(rf"imgline_messages_{published}", text), text
