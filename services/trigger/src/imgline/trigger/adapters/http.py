"""The webhook endpoint: ``POST /hooks`` (any forge; the headers say which), ``GET /healthz``.

Only carries bytes: a body larger than ``max_body_bytes`` is refused before it is read whole
(413), and the decision is :meth:`Webhook.handle`'s, run off the event loop (publishing waits
for the broker's confirm).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from imgline.trigger.webhook import Webhook

WEBHOOK_PATH = "/hooks"


def make_app(webhook: Webhook, max_body_bytes: int) -> web.Application:
    async def hook(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > max_body_bytes:
            return web.json_response({"error": "event too large"}, status=413)
        body = await request.content.read(max_body_bytes + 1)
        if len(body) > max_body_bytes:
            return web.json_response({"error": "event too large"}, status=413)
        headers = {k: v for k, v in request.headers.items()}
        answer = await asyncio.get_running_loop().run_in_executor(
            None, webhook.handle, headers, body
        )
        return web.json_response(answer.body, status=answer.status)

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=max_body_bytes + 1)
    app.router.add_post(WEBHOOK_PATH, hook)
    app.router.add_get("/healthz", health)
    return app
