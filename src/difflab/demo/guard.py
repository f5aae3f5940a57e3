"""What the demo's server refuses before Gradio sees a request: the page has no password.

An ASGI middleware (`Guard`) in front of Gradio's routes answers, before reading the body:
- 403 to a request from another web site (its Origin) and, on a loopback address, to a request for
  another host name (a page that points its own name at 127.0.0.1: DNS rebinding);
- 404 to /monitoring and to the POST routes the page never uses (uploads, recordings, streams);
- 411 / 413 to a body of unknown length or over MAX_BODY bytes;
and then 422 to a body that names a file. `exposure_warning` is the line `--host` prints when the
server can be reached from other machines.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Optional
from urllib.parse import urlsplit

from ..infra.untrusted import shown

# What one client may ask of the server. The largest request the page sends (ten values and a prompt of at
# most session.MAX_PROMPT_CHARS) is under 2 KB; Gradio would otherwise read a body of any size into memory.
MAX_BODY = 64 * 1024
# Gradio's POST routes that the page uses (queue/join for sampling, run/ for its small unqueued updates, cancel,
# reset) and the HTTP API's call/. The others (upload, process_recording, stream, component_server, vibe-edit,
# run-history, the old api/, ...) take files or edit the app; they are refused before their body is read.
POST_ROUTES = ("/gradio_api/queue/join", "/gradio_api/run/", "/gradio_api/cancel", "/gradio_api/reset",
               "/gradio_api/call/")


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine only (127.0.0.1, ::1, localhost), not an address others can reach."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any address
        return False


def refusal(scope: dict, loopback: bool) -> Optional[tuple[int, str]]:
    """(HTTP status, reason) for a request the demo does not serve, or None for one it does.

    A browser sends an Origin header with every cross-site POST. Another web site open in the student's
    browser could otherwise run requests here (Gradio only withholds the answer from it, the work is done).
    A page that points its own host name at 127.0.0.1 (DNS rebinding) sends a matching Origin, but its Host
    header then names that site: on a loopback address, only loopback host names are served.
    """
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    host, origin, path = headers.get("host", ""), headers.get("origin"), scope.get("path", "")
    if loopback and not is_loopback(urlsplit(f"//{host}").hostname or ""):
        return 403, f"refused: this demo serves only localhost, not Host {shown(host, 60)}"
    if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
        return 403, f"refused: a request from another site (Origin {shown(origin, 60)})"
    if path.startswith(("/monitoring", "/gradio_api/monitoring")):
        return 404, "not found: monitoring is off"
    if scope.get("method") == "POST" and not path.startswith(POST_ROUTES):
        return 404, "not found: the demo takes no uploads and offers no such route"
    length = headers.get("content-length", "0")
    if "transfer-encoding" in headers:  # a body of unknown length: the page never sends one
        return 411, "refused: send a Content-Length"
    if not length.isdigit() or int(length) > MAX_BODY:
        return 413, f"refused: a request body of at most {MAX_BODY} bytes"
    return None


def names_a_file(body: bytes) -> bool:
    """Whether a JSON body holds a Gradio file reference ({"path": ..., "meta": {"_type": "gradio.FileData"}}).

    The page sends none. Gradio would copy the file it names into its cache before the demo's own code
    sees the value, or fail there with a traceback in the log (a path it does not allow, such as /etc/passwd).
    The body is at most MAX_BODY bytes (checked first), so this walk is short.
    """
    try:
        stack = [json.loads(body)]
    except (ValueError, RecursionError):  # not JSON: Gradio answers 400 itself
        return False
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            meta = node.get("meta")
            if isinstance(meta, dict) and meta.get("_type") == "gradio.FileData":
                return True
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


class Guard:
    """ASGI middleware in front of Gradio's routes: answers `refusal`'s status for what the demo does not serve,
    before any of the request's body is read; then refuses a body that names a file."""

    def __init__(self, app, loopback: bool):
        self.app, self.loopback = app, loopback

    async def __call__(self, scope, receive, send):
        refused = refusal(scope, self.loopback) if scope["type"] in ("http", "websocket") else None
        if refused is None and scope["type"] == "http" and scope["method"] == "POST":
            body, receive = await _read_body(receive)
            if names_a_file(body):
                refused = 422, "refused: the demo takes no files"
        if refused is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":  # closed before it is accepted: the browser sees HTTP 403
            return await send({"type": "websocket.close", "code": 1008})
        from starlette.responses import PlainTextResponse

        await PlainTextResponse(refused[1], status_code=refused[0])(scope, receive, send)


async def _read_body(receive):
    """The whole body (at most MAX_BODY bytes: its Content-Length was checked), and a `receive` that hands it
    on to Gradio as if it came from the client."""
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            return b"", receive
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body, sent = b"".join(chunks), False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return body, replay


def exposure_warning(host: str) -> str:
    """One line for a host other machines can reach ('' for this machine only): the page has no password."""
    if is_loopback(host):
        return ""
    return (f"warning: --host {host} serves the demo unauthenticated to every machine that can reach this one: "
            "anyone there can run models on this computer; use 127.0.0.1 unless you trust the network")
