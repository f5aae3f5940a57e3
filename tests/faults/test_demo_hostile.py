"""The demo's open doors (issue 42, item 2), tried against a real server on 127.0.0.1 as a hostile client would:
an upload the page never needs, a request from another web site, /monitoring, a list or a dict where text
belongs, a 10 MB prompt, a queue filled by one client, the PNGs Gradio writes, and `--host 0.0.0.0`.

Every request is bounded: a timeout, and at most READ_LIMIT bytes of any answer read. A large body is sent
with `Expect: 100-continue`, so a server that refuses it says so before the body goes out.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from ._support import ROOT, env, record, tiny_config, tiny_data

TIMEOUT = 30
READ_LIMIT = 200_000  # bytes of an answer read: a 10 MB echo shows as a long answer, not 10 MB in memory
MODEL = "tiny/untrained"
# A request the tiny model answers in a fraction of a second: model, digit, guidance, steps, sampler, seed,
# images, side by side, second model, prompt (the order of the /generate endpoint's parameters).
FAST = [MODEL, 3, 2.0, 2, "ddim", 0, 1, False, MODEL, ""]
PROMPT = len(FAST) - 1
# The server runs the project's own command, with the PNG clean-up made quick enough to watch in a test:
# every second, files older than 2 seconds (the demo's own setting is minutes).
CHILD = f"""import sys
sys.path.insert(0, {str(ROOT / 'src')!r})
import difflab.demo.page as page
page.CACHE_CLEANUP = (1, 2)
from difflab.commands.common import run_main
from difflab.commands.demo import main
sys.exit(run_main(main))
"""


class Server:
    """The demo as a child process: its URL, its temporary root (GRADIO_TEMP_DIR) and what it has printed."""

    def __init__(self, proc: subprocess.Popen, url: str, temp: Path, lines: list):
        self.proc, self.url, self.temp, self._lines = proc, url, temp, lines

    def log(self) -> str:
        return "".join(self._lines)

    def files(self, pattern: str = "*") -> list:
        return [p for p in self.temp.rglob(pattern) if p.is_file()]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One untrained tiny model (no attention: quick to sample) served on a free port of 127.0.0.1."""
    pytest.importorskip("gradio", reason="pip install -r requirements-demo.txt")
    from difflab.training import Trainer

    tmp = tmp_path_factory.mktemp("demo-hostile")
    ckpt = Trainer(tiny_config(tmp, model={"attention_levels": []}), data=tiny_data(16), quiet=True
                   ).save("untrained.pt")
    temp = tmp / "gradio"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, "--checkpoint", str(ckpt)], cwd=tmp,
                            env={**env(), "GRADIO_TEMP_DIR": str(temp)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list = []
    threading.Thread(target=lambda: [lines.append(line) for line in proc.stdout], daemon=True).start()
    deadline = time.monotonic() + 90
    while not any(line.startswith("difflab demo: http://") for line in lines):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the demo did not print its URL:\n" + "".join(lines)[-3000:])
        time.sleep(0.1)
    url = next(line for line in lines if line.startswith("difflab demo: http://")).split()[2]
    yield Server(proc, url, temp, lines)
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


# --- bounded HTTP ------------------------------------------------------------------------------------------


def request(url: str, body: bytes = None, headers: dict = None) -> tuple[int, bytes]:
    """(status, at most READ_LIMIT bytes of the answer) of a GET, or a POST when `body` is given."""
    req = urllib.request.Request(url, body, {"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            return r.status, r.read(READ_LIMIT)
    except urllib.error.HTTPError as e:
        return e.code, e.read(READ_LIMIT)


def post_large(url: str, body: bytes, headers: dict) -> tuple[int, bytes]:
    """POST `body` with 'Expect: 100-continue': the body is sent only once the server has said it wants it, so
    a refusal comes back as a status, not as a connection reset half-way through the upload."""
    u = urlsplit(url)
    head = [f"POST {u.path} HTTP/1.1", f"Host: {u.netloc}", f"Content-Length: {len(body)}",
            "Expect: 100-continue", "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection((u.hostname, u.port), timeout=TIMEOUT) as s:
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        answer = s.recv(65536)
        if answer.startswith(b"HTTP/1.1 100"):
            s.sendall(body)
            answer = answer.split(b"\r\n\r\n", 1)[1]
        while len(answer) < READ_LIMIT:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    if not answer.startswith(b"HTTP/1.1 "):  # the 100 and the final answer may arrive apart
        return 0, answer
    head, _, rest = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest


def call(server: Server, data: list) -> tuple[int, bytes]:
    """Start /generate through Gradio's HTTP API: (status, answer): 200 and an event id when it is queued."""
    return request(f"{server.url}gradio_api/call/generate", json.dumps({"data": data}).encode())


def result(server: Server, answer: bytes) -> str:
    """The text of a queued event's outcome (at most READ_LIMIT bytes of it): its status line, or the error."""
    event_id = json.loads(answer)["event_id"]
    status, stream = request(f"{server.url}gradio_api/call/generate/{event_id}")
    lines = stream.decode(errors="replace").splitlines()
    payload = next((line[6:] for line in reversed(lines) if line.startswith("data: ")), "")
    try:
        data = json.loads(payload)
    except ValueError:  # cut short at READ_LIMIT: an answer that long is the fault itself
        return stream.decode(errors="replace")
    return data[0] if isinstance(data, list) and data and isinstance(data[0], str) else str(data)


def generate_message(server: Server, data: list) -> str:
    status, answer = call(server, data)
    return result(server, answer) if status == 200 else f"HTTP {status}: {answer[:300]!r}"


def multipart(name: str, size: int) -> tuple[bytes, str]:
    """A form upload of one file of `size` bytes, as a browser sends it: (body, content type)."""
    boundary = "difflabboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + b"x" * size
    return body + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# --- the cases ---------------------------------------------------------------------------------------------


def test_an_upload_is_refused_and_nothing_is_stored(server):
    """The page uploads nothing: Gradio's upload route must not store what a client sends it."""
    outcomes = []
    for size in (2_000, 1_000_000):  # just over a 1 KB bound, and a megabyte
        name = f"hostile-{size}.bin"
        body, content_type = multipart(name, size)
        status, answer = post_large(f"{server.url}gradio_api/upload", body, {"Content-Type": content_type})
        time.sleep(0.3)  # Gradio moves an accepted file into its cache after answering
        outcomes.append((size, status, answer[:120], [p.name for p in server.files(name)]))
    refused = [400 <= status < 500 and not stored for _, status, _, stored in outcomes]
    record("demo: a file uploaded to Gradio's upload route (2 KB, 1 MB)", len(refused), sum(refused),
           "HTTP 404 before the body is read; nothing stored")
    assert all(refused), outcomes


def test_a_request_from_another_site_is_refused_before_it_runs(server):
    """A page on another site, open in the same browser, must not run requests here (Gradio's CORS only hides
    the answer from it); nor a page that points its own name at 127.0.0.1 (DNS rebinding)."""
    port = urlsplit(server.url).port
    data = json.dumps({"data": FAST}).encode()
    cases = {
        "foreign Origin": {"Origin": "http://evil.example"},
        "Origin null (a sandboxed page)": {"Origin": "null"},
        "rebound host name": {"Origin": f"http://evil.example:{port}", "Host": f"evil.example:{port}"},
    }
    outcomes = {k: request(f"{server.url}gradio_api/call/generate", data, h) for k, h in cases.items()}
    body, content_type = multipart("cross-site.bin", 2_000)
    outcomes["upload, foreign Origin"] = post_large(f"{server.url}gradio_api/upload", body,
                                                    {"Content-Type": content_type, "Origin": "http://evil.example"})
    refused = [400 <= status < 500 and b"event_id" not in answer for status, answer in outcomes.values()]
    refused[-1] = refused[-1] and not server.files("cross-site.bin")
    # The page's own requests carry its own origin: they still run.
    status, answer = request(f"{server.url}gradio_api/call/generate", data, {"Origin": server.url.rstrip("/")})
    own = status == 200 and "Not generated" not in result(server, answer)
    record("demo: requests from another site (Origin), a sandboxed page, a DNS-rebinding host name",
           len(refused) + 1, sum(refused) + own, "HTTP 403 before anything runs; the page's own origin is served")
    assert all(refused) and own, (outcomes, status, answer)


def test_monitoring_is_off(server):
    paths = ["monitoring", "monitoring/summary", "gradio_api/monitoring"]
    outcomes = {p: request(f"{server.url}{p}") for p in paths}
    off = [status in (403, 404) for status, _ in outcomes.values()]
    record("demo: Gradio's /monitoring pages", len(off), sum(off), "HTTP 404")
    assert all(off), outcomes


# A list and a dict in each field that takes text or a number; then a dict shaped like Gradio's reference to a
# file, which Gradio itself would act on (copy the file, or fail with a traceback) before the demo sees it.
HOSTILE_VALUES = [[1, 2], {"a": 1}]
FILE_REFERENCE = {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}
FIELDS = {"prompt": PROMPT, "model": 0, "sampler": 4, "digit": 1, "steps": 3}


def dependencies(server: Server) -> list:
    """The page's events as Gradio's /config lists them: id, api_name, queue, input component ids."""
    status, config = request(f"{server.url}config")
    return json.loads(config)["dependencies"]


def test_a_list_or_a_dict_where_text_belongs_gets_a_message_not_a_traceback(server):
    """/generate answers with the page's own message; the page's small unqueued events (the Steps label, a
    model's defaults, side by side), which a client can call as well, change nothing; no traceback either way."""
    outcomes = []
    for field, index in FIELDS.items():
        for value in HOSTILE_VALUES + [FILE_REFERENCE]:
            log_before = len(server.log())
            data = list(FAST)
            data[index] = value
            message = generate_message(server, data)
            time.sleep(0.1)  # a log line (if any) is written before the answer; let the reader catch up
            outcomes.append((field, value, message, server.log()[log_before:]))
    clear = [("no files" in message and message.startswith("HTTP 422") if value is FILE_REFERENCE else
              message.startswith("**Not generated.**") and f"{field}:" in message and len(message) < 400)
             and "Traceback" not in log for field, value, message, log in outcomes]
    for dep in [d for d in dependencies(server) if not d["queue"]]:
        for value in HOSTILE_VALUES:
            log_before = len(server.log())
            body = {"data": [value] * len(dep["inputs"]), "fn_index": dep["id"], "session_hash": "hostile"}
            status, answer = request(f"{server.url}gradio_api/run/predict", json.dumps(body).encode())
            time.sleep(0.1)
            log = server.log()[log_before:]
            clear.append(status == 200 and "Traceback" not in log)
            outcomes.append((dep["api_name"], value, f"HTTP {status}: {answer[:200]!r}", log[-500:]))
    record(f"demo API: a list, a dict, a file reference as the {', '.join(FIELDS)}; lists and dicts to the "
           "page's unqueued events", len(clear), sum(clear),
           "'Not generated.' naming the field and the value, shortened; a file reference: HTTP 422, one line; "
           "the page's own events change nothing; no traceback in the server log")
    assert all(clear), [o for o, ok in zip(outcomes, clear) if not ok][:3]


def test_a_huge_prompt_is_refused_without_being_echoed(server):
    """A 10 MB prompt is refused at the door (the request body is bounded); a 10 KB one by the prompt's own
    bound, with the value shortened in the message."""
    huge = list(FAST)
    huge[PROMPT] = "7 " * 5_000_000
    status, answer = post_large(f"{server.url}gradio_api/call/generate", json.dumps({"data": huge}).encode(),
                                {"Content-Type": "application/json"})
    if status == 200:  # queued: what comes back is the message about it
        answer = result(server, answer).encode()
    refused_short = status in (411, 413) and len(answer) < 300
    long = list(FAST)
    long[PROMPT] = "seven " * 2_000
    message = generate_message(server, long)
    shortened = "prompt: expected at most" in message and len(message) < 400
    record("demo API: a 10 MB prompt, a 12 KB prompt", 2, refused_short + shortened,
           "HTTP 413 with one short line; 'Not generated. prompt: expected at most 200 characters, got 12,000 "
           "('seven seven ...')'")
    assert refused_short and shortened, (status, answer[:300], message[:300])


def test_one_client_cannot_fill_the_queue_with_maximal_requests(server):
    """One slow request samples; a client then sends 11 more at once. The queue takes MAX_WAITING of them and
    refuses the rest ('Queue is full', HTTP 503), so one client holds at most MAX_WAITING + 1 requests, each of
    at most session.MAX_WORK image evaluations: (4 + 1) x 35 s on a laptop CPU, instead of 64 x 35 s."""
    from difflab.demo import page, session

    slow = list(FAST)
    slow[3] = 400  # a second or two on the tiny model: the others arrive while it samples
    sent = [call(server, slow)] + [call(server, FAST[:5] + [seed] + FAST[6:]) for seed in range(1, 12)]
    accepted = [answer for status, answer in sent if status == 200]
    refused = [(status, answer) for status, answer in sent if status != 200]
    full = all(status == 503 and b"Queue is full" in answer for status, answer in refused)
    for answer in accepted:  # let the accepted ones finish, so that later tests find the server idle
        result(server, answer)
    waiting = getattr(page, "MAX_WAITING", None)
    worst = (waiting or 64) + 1  # the most one client may hold: MAX_WAITING waiting, one sampling
    held = waiting is not None and waiting <= 8 and 1 <= len(accepted) <= worst and full
    # Gradio's /run and /api routes would run /generate at once, beside the queue: refused.
    generate = next(d["id"] for d in dependencies(server) if d["api_name"] == "generate")
    skips = [request(f"{server.url}gradio_api/{route}", json.dumps({"data": FAST, **extra}).encode())
             for route, extra in [("run/generate", {}), ("api/generate", {}),
                                  ("run/predict", {"fn_index": generate, "session_hash": "hostile"})]]
    skipped = [status == 200 for status, _ in skips]
    record("demo: one client sends 12 requests at once; 3 more by routes that skip the queue",
           len(sent) + len(skips), min(len(accepted), worst) + len(refused) * full + skipped.count(False),
           f"{len(accepted)} queued, {len(refused)} refused with 'Queue is full' (HTTP 503): at most {worst} "
           f"requests of {session.MAX_WORK} image evaluations each; /run and /api refused (HTTP 404)")
    assert held and not any(skipped), ([s for s, _ in sent], refused[:2], skips)


def test_a_host_other_machines_reach_warns_that_the_server_is_unauthenticated(monkeypatch, capsys):
    """`--host` on an address others can reach: one line on stderr before the server starts; none for this
    machine only. launch() is stubbed: nothing is bound."""
    from difflab.demo import page, session
    from difflab.commands.demo import main

    launched = []
    monkeypatch.setattr(session, "load_models", lambda paths, device: {MODEL: None})
    monkeypatch.setattr(page, "launch", lambda models, host, port: launched.append(host))
    outcomes = []
    for host, exposed in [("0.0.0.0", True), ("192.168.1.20", True), ("::", True), ("127.0.0.1", False),
                          ("localhost", False), ("::1", False)]:
        main(["--checkpoint", "model.pt", "--host", host])
        err = capsys.readouterr().err.strip().splitlines()
        warned = len(err) == 1 and "unauthenticated" in err[0] and host in err[0]
        outcomes.append((host, launched[-1:] == [host] and (warned if exposed else err == []), err))
    ok = [o[1] for o in outcomes]
    record("demo: --host 0.0.0.0, 192.168.1.20, :: (reachable) and 127.0.0.1, localhost, ::1", len(ok), sum(ok),
           "one line on stderr: the server is reachable from the network, unauthenticated; none for loopback")
    assert all(ok), outcomes


def test_the_pngs_served_are_deleted_and_the_folder_removed_on_exit(server):
    """Gradio writes every picture it serves to a file. The demo deletes them as they age (here after 2 s) and
    removes its folder when stopped (SIGTERM, as `kill` or a test harness stops it). Runs last: it stops the server."""
    written = 0
    for seed in (21, 22, 23):
        assert "Not generated" not in generate_message(server, FAST[:5] + [seed] + FAST[6:])
        written = max(written, len(server.files("*.png")))
    deadline = time.monotonic() + 8
    while server.files("*.png") and time.monotonic() < deadline:
        time.sleep(0.25)
    aged_out = written >= 3 and not server.files("*.png")
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.proc.kill()
    left = server.files() + [p for p in server.temp.glob("difflab-demo-*")]
    removed = server.proc.returncode is not None and not left
    record("demo: PNGs Gradio writes while serving, and its folder after SIGTERM", 2, aged_out + removed,
           "deleted 2 s after they are written (5 min outside this test); the folder removed on exit")
    assert aged_out and removed, (written, [str(p) for p in left][:5], os.listdir(server.temp)[:5])
