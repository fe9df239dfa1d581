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
