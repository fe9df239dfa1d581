"""Unit tests: connection files in a temporary home, an OpenAI-compatible stand-in on loopback."""

import asyncio
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

import llm_agent_client as lac


class Endpoint(BaseHTTPRequestHandler):
    ready = True
    key = "sk-test"

    def log_message(self, *args):
        pass

    def _json(self, code, body):
        b = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)

    def do_GET(self):
        if self.path == "/readyz":
            self.send_response(200 if Endpoint.ready else 503)
            self.end_headers()
            return
        if self.headers.get("Authorization") != "Bearer " + Endpoint.key:
            return self._json(401, {"error": {"message": "invalid API key"}})
        if self.path == "/v1/models":
            return self._json(200, {"object": "list", "data": [{"id": "tiny", "object": "model", "created": 0, "owned_by": "vllm"}]})
        self._json(404, {})

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        self.rfile.read(n)
        if self.headers.get("Authorization") != "Bearer " + Endpoint.key:
            return self._json(401, {"error": {"message": "invalid API key"}})
        self._json(200, {"id": "c1", "object": "chat.completion", "created": 0, "model": "tiny",
                         "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


def _serve(handler):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield "http://127.0.0.1:%d" % srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def endpoint():
    Endpoint.ready = True
    yield from _serve(Endpoint)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for v in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "SLURM_JOB_ID", "LLM_AGENT_MODEL"):
        monkeypatch.delenv(v, raising=False)
    return tmp_path


def write_job(home, job, base, state="ready", reason="", key="sk-test", where=("jobs",)):
    d = home.joinpath(".llm-agent", *where, str(job))
    d.mkdir(parents=True, exist_ok=True)
    keyfile = d / "api_key"
    keyfile.write_text(key + "\n")
    keyfile.chmod(0o600)
    conn = {"job_id": str(job), "state": state, "reason": reason, "base_url": base + "/v1",
            "served_model_name": "tiny", "api_key_file": str(keyfile)}
    (d / "connection.json").write_text(json.dumps(conn))
    return d


def test_find_connection(home):
    write_job(home, 7, "http://x")
    write_job(home, "chat", "http://x", where=("services",))
    assert lac.find_connection(job="7") == str(home / ".llm-agent/jobs/7/connection.json")
    assert lac.find_connection(service="chat") == str(home / ".llm-agent/services/chat/connection.json")
    d = str(home / ".llm-agent/jobs/7")
    assert lac.find_connection(state_dir=d) == d + "/connection.json"
    assert lac.find_connection(state_dir=d + "/connection.json") == d + "/connection.json"
    os.environ["SLURM_JOB_ID"] = "7"
    try:
        assert lac.find_connection() == d + "/connection.json"
    finally:
        del os.environ["SLURM_JOB_ID"]
    with pytest.raises(lac.NoConnection, match="give a job"):
        lac.find_connection()
    with pytest.raises(lac.NoConnection, match="no connection file"):
        lac.find_connection(job="8")
    with pytest.raises(ValueError):
        lac.find_connection(job="7", service="chat")


def test_connect_chat_models_and_wrong_key(home, endpoint):
    write_job(home, 7, endpoint)
    client = lac.connect(job="7", max_retries=0)
    assert isinstance(client, openai.OpenAI)
    assert str(client.base_url).rstrip("/") == endpoint + "/v1"
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}])
    assert r.choices[0].message.content == "hi"
    assert lac.models(job="7") == ["tiny"]
    assert lac.model(job="7") == "tiny"
    write_job(home, 8, endpoint, key="sk-wrong")
    with pytest.raises(openai.AuthenticationError):
        lac.connect(job="8", max_retries=0).models.list()


def test_connect_async(home, endpoint):
    write_job(home, 7, endpoint)

    async def go():
        client = lac.connect_async(job="7", max_retries=0)
        assert isinstance(client, openai.AsyncOpenAI)
        conn = await lac.wait_ready_async(job="7", timeout=5, poll=0.05)
        r = await client.chat.completions.create(model=conn.model, messages=[{"role": "user", "content": "hello"}])
        await client.close()
        return r.choices[0].message.content

    assert asyncio.run(go()) == "hi"


def test_environment_from_the_tunnel(home, endpoint, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", endpoint + "/v1/")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    conn = lac.read_connection()
    assert conn.base_url == endpoint + "/v1" and conn.path == ""
    assert lac.connect(max_retries=0).models.list().data[0].id == "tiny"
    assert lac.model() == "tiny", "no file: the first of /v1/models"
    assert lac.health() == ("ready", "")
    assert lac.wait_ready(timeout=2).base_url == endpoint + "/v1"
    Endpoint.ready = False
    assert lac.health() == ("not ready", "/readyz answered 503")
    with pytest.raises(TimeoutError):
        lac.wait_ready(timeout=0.2, poll=0.05)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    assert lac.health()[0] == "unreachable"


def test_health_and_wait_ready_follow_the_file(home, endpoint):
    d = write_job(home, 7, endpoint, state="restarting", reason="engine exited 1")
    assert lac.health(job="7") == ("restarting", "engine exited 1")

    def become_ready():
        write_job(home, 7, endpoint, state="ready")

    timer = threading.Timer(0.3, become_ready)
    timer.start()
    conn = lac.wait_ready(job="7", timeout=10, poll=0.05)
    timer.join()
    assert conn.ready and conn.job_id == "7"
    assert lac.health(job="7") == ("ready", "")

    Endpoint.ready = False
    assert lac.health(job="7") == ("ready", ""), "the file decides while the endpoint answers"
    write_job(home, 9, "http://127.0.0.1:1")
    assert lac.health(job="9")[0] == "unreachable"
    with pytest.raises(TimeoutError, match="not ready within"):
        lac.wait_ready(job="9", timeout=0.2, poll=0.05)

    write_job(home, 7, endpoint, state="failed", reason="engine crashed 5 times")
    with pytest.raises(lac.JobEnded, match="failed .engine crashed 5 times."):
        lac.wait_ready(job="7", timeout=5)
    with pytest.raises(lac.NoConnection):
        lac.wait_ready(job="404", timeout=0.1, poll=0.05)
    assert d.exists()


def test_wait_ready_async_ends_and_times_out(home, endpoint):
    write_job(home, 7, endpoint, state="stopped")
    with pytest.raises(lac.JobEnded):
        asyncio.run(lac.wait_ready_async(job="7", timeout=1))
    write_job(home, 7, endpoint, state="starting")
    with pytest.raises(TimeoutError):
        asyncio.run(lac.wait_ready_async(job="7", timeout=0.2, poll=0.05))
    with pytest.raises(lac.NoConnection):
        asyncio.run(lac.wait_ready_async(job="404", timeout=0.1, poll=0.05))


def test_key_file_must_be_private(home, endpoint):
    d = write_job(home, 7, endpoint)
    (d / "api_key").chmod(0o644)
    with pytest.raises(PermissionError, match="other users could read it"):
        lac.connect(job="7")
    (d / "api_key").unlink()
    (d / "api_key").symlink_to(home / "elsewhere")
    with pytest.raises(PermissionError, match="cannot open"):
        lac.connect(job="7")
    (d / "api_key").unlink()
    (d / "api_key").mkdir()
    with pytest.raises(PermissionError):
        lac.connect(job="7")


def test_no_key_means_none(home, endpoint, monkeypatch):
    d = home / "state"
    d.mkdir()
    (d / "connection.json").write_text(json.dumps({"job_id": "3", "state": "ready", "base_url": endpoint + "/v1"}))
    conn = lac.read_connection(state_dir=str(d))
    assert conn.api_key() == ""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert conn.api_key() == "sk-env"


class HandedOver(Endpoint):
    """A job that has handed its service over: 503, Retry-After and the successor's address."""

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        self.rfile.read(n)
        b = b'{"error": {"message": "handed over"}}'
        self.send_response(503)
        self.send_header("Retry-After", "1")
        self.send_header(lac.SUCCESSOR_HEADER, "http://elsewhere/v1")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)


@pytest.fixture
def handed_over():
    yield from _serve(HandedOver)


def test_service_follows_the_successor(home, endpoint, handed_over):
    write_job(home, "svc", handed_over, where=("services",))
    client = lac.connect(service="svc", max_retries=0)
    aclient = lac.connect_async(service="svc", max_retries=0)
    # The successor takes over: the file names it; the old job answers 503 with its address.
    write_job(home, "svc", endpoint, where=("services",))
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "hi"
    r = asyncio.run(aclient.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}]))
    assert r.choices[0].message.content == "hi"


def test_service_without_successor_gives_the_503(home, handed_over):
    write_job(home, "svc", handed_over, where=("services",))
    client = lac.connect(service="svc", max_retries=0,
                         http_client=__import__("httpx").Client(transport=lac.FollowTransport("svc", timeout=0.3)))
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 503


def test_service_follows_past_a_job_that_is_gone(home, endpoint):
    # The client knows the old job; by the time it asks, that job has closed its port.
    write_job(home, "svc", "http://127.0.0.1:1", where=("services",))
    client = lac.connect(service="svc", max_retries=0)
    aclient = lac.connect_async(service="svc", max_retries=0)
    write_job(home, "svc", endpoint, where=("services",))
    for _ in range(2):  # the second goes to the job that serves now at once
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content == "hi"
    r = asyncio.run(aclient.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}]))
    assert r.choices[0].message.content == "hi"


def test_service_gone_without_successor_raises(home):
    write_job(home, "svc", "http://127.0.0.1:1", where=("services",))
    client = lac.connect(service="svc", max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])


def write_service(home, base, job_state, service_state, reason=""):
    """A service's file: the job's connection and the service's own part."""
    d = write_job(home, "svc", base, state=job_state, where=("services",))
    conn = json.loads((d / "connection.json").read_text())
    conn["service"] = {"name": "svc", "state": service_state, "reason": reason, "current_job": "1", "ended": False, "jobs": []}
    (d / "connection.json").write_text(json.dumps(conn))
    return d


FAKE_WAKE = """#!{python}
# Stand-in for `llm-agent service wake --wait ... NAME`: records its arguments, prints the
# states a wake goes through and, told to succeed, makes the service's file say it serves.
import json, os, sys
with open(os.environ["WAKE_LOG"], "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
print("service svc: job 7 queued to wake it", flush=True)
print("12:00:00 queued: job 7 is pending (Resources)", flush=True)
if os.environ["WAKE_OUTCOME"] != "serve":
    print("llm-agent: the service does not serve after 1s; it is queued: job 7 is pending (Resources)", flush=True)
    sys.exit(1)
print("12:00:05 starting: loading the model", flush=True)
path = os.path.join(os.environ["HOME"], ".llm-agent", "services", "svc", "connection.json")
conn = json.load(open(path))
conn.update(state="ready", base_url=os.environ["WAKE_BASE"] + "/v1", job_id="7")
conn["service"].update(state="serving", reason="")
json.dump(conn, open(path + ".tmp", "w")); os.replace(path + ".tmp", path)
print("12:00:09 serving", flush=True)
"""


@pytest.fixture
def fake_wake(home, tmp_path, monkeypatch):
    import sys
    binary = tmp_path / "llm-agent"
    binary.write_text(FAKE_WAKE.format(python=sys.executable))
    binary.chmod(0o755)
    monkeypatch.setenv("LLM_AGENT_BIN", str(binary))
    monkeypatch.setenv("WAKE_LOG", str(tmp_path / "wake.log"))
    return tmp_path / "wake.log"


def test_sleeping_service_is_woken_and_the_request_held(home, endpoint, fake_wake, monkeypatch):
    monkeypatch.setenv("WAKE_OUTCOME", "serve")
    monkeypatch.setenv("WAKE_BASE", endpoint)
    write_service(home, "http://127.0.0.1:1", "stopped", "asleep", "no request for 30m0s")
    seen = []
    client = lac.connect(service="svc", max_retries=0, on_progress=seen.append, wake_timeout=60)
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "hi", "held during the wake, then answered once"
    assert seen == ["service svc: job 7 queued to wake it", "12:00:00 queued: job 7 is pending (Resources)",
                    "12:00:05 starting: loading the model", "12:00:09 serving"]
    assert fake_wake.read_text().splitlines() == ["service wake --wait 60s --by the Python client svc"]
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert fake_wake.read_text().count("\n") == 1, "awake now: no second wake"


def test_sleeping_service_async(home, endpoint, fake_wake, monkeypatch):
    monkeypatch.setenv("WAKE_OUTCOME", "serve")
    monkeypatch.setenv("WAKE_BASE", endpoint)
    write_service(home, "http://127.0.0.1:1", "stopped", "asleep")
    aclient = lac.connect_async(service="svc", max_retries=0)
    r = asyncio.run(aclient.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}]))
    assert r.choices[0].message.content == "hi"


def test_wake_that_times_out_says_the_state(home, fake_wake, monkeypatch):
    monkeypatch.setenv("WAKE_OUTCOME", "queue")
    write_service(home, "http://127.0.0.1:1", "stopped", "asleep")
    client = lac.connect(service="svc", max_retries=0, wake_timeout=1)
    with pytest.raises(lac.ServiceAsleep) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert "pending (Resources)" in str(e.value) and e.value.state.startswith("llm-agent: the service does not serve")


def test_client_that_does_not_wait_gets_503(home, fake_wake, monkeypatch):
    write_service(home, "http://127.0.0.1:1", "stopped", "asleep", "no request for 30m0s")
    client = lac.connect(service="svc", max_retries=0, wake_timeout=None)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 503
    assert e.value.response.headers["Retry-After"] == "30"
    assert "asleep: no request for 30m0s" in e.value.message
    assert not fake_wake.exists(), "nothing woken"


def test_no_llm_agent_to_wake_with(home, monkeypatch):
    monkeypatch.delenv("LLM_AGENT_BIN", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    write_service(home, "http://127.0.0.1:1", "stopped", "waking", "job 7 queued")
    client = lac.connect(service="svc", max_retries=0)
    with pytest.raises(lac.ServiceAsleep, match="LLM_AGENT_BIN"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
