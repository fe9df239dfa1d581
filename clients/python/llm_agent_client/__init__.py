"""Connect the official OpenAI SDK to an llm-agent job.

The job's head writes ``connection.json`` in its state directory
(``~/.llm-agent/jobs/JOBID`` by default, ``~/.llm-agent/services/NAME`` for a service):
where the endpoint is, which model it serves, its state and where the API key is. This
module reads it; the key is read from its file (mode 0600, owned by you) and never logged.

On a laptop, through ``llm-agent tunnel``, there is no connection file: set
``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` as the tunnel prints them and call the functions
without a job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import shutil
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import Callable, Optional, Tuple

import httpx
import openai

__all__ = [
    "AsyncFollowTransport",
    "Connection",
    "FollowTransport",
    "JobEnded",
    "NoConnection",
    "ServiceAsleep",
    "connect",
    "connect_async",
    "find_connection",
    "health",
    "model",
    "models",
    "read_connection",
    "wait_ready",
    "wait_ready_async",
]

#: States after which the job will not serve again.
ENDED_STATES = ("stopped", "failed")
#: Where a user's jobs and services keep their state, under the home directory.
JOBS_DIR = os.path.join(".llm-agent", "jobs")
SERVICES_DIR = os.path.join(".llm-agent", "services")
CONNECTION_FILE = "connection.json"
#: The header of a 503 from a job that has handed its service over: the successor's base URL.
SUCCESSOR_HEADER = "X-Llm-Agent-Successor"
#: How long a request waits for the service's file to name the successor.
FOLLOW_TIMEOUT = 60.0
#: How long a request to a sleeping service waits for it to wake (``llm-agent service wake``).
WAKE_TIMEOUT = 15 * 60.0
#: The service states in which it serves no request until woken.
SLEEP_STATES = ("asleep", "waking")

log = logging.getLogger("llm_agent_client")


class NoConnection(LookupError):
    """No connection file (and no OPENAI_BASE_URL) says where the endpoint is."""


class JobEnded(RuntimeError):
    """The job stopped or failed while it was waited for."""

    def __init__(self, conn: "Connection"):
        super().__init__(f"job {conn.job_id} has ended: {conn.state}" + (f" ({conn.reason})" if conn.reason else ""))
        self.connection = conn


class ServiceAsleep(RuntimeError):
    """The service sleeps (--idle-release) and the request did not wait for it to wake, or it
    did not serve within the wake's timeout. ``state`` is the service's last state."""

    def __init__(self, service: str, state: str, waited: Optional[float] = None):
        msg = f"service {service} is {state}"
        if waited is not None:
            msg += f" after waiting {waited:g} s for it to wake"
        super().__init__(msg)
        self.service, self.state = service, state


@dataclasses.dataclass(frozen=True)
class Connection:
    """What a client needs of the connection file, or of the environment."""

    base_url: str
    state: str = "ready"
    reason: str = ""
    job_id: str = ""
    model: str = ""
    api_key_file: str = ""
    path: str = ""  # the connection file; empty when from the environment

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def api_key(self) -> str:
        """The API key: from the job's key file, else $OPENAI_API_KEY, else "" (no key)."""
        if self.api_key_file:
            return _read_secret(self.api_key_file)
        return os.environ.get("OPENAI_API_KEY", "")


def _read_secret(path: str) -> str:
    """Reads a key file that only its owner, this user, can read: checked on the open handle."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise PermissionError(f"cannot open the API key file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PermissionError(f"{path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise PermissionError(f"{path} belongs to uid {st.st_uid}, not to this user")
        if st.st_mode & 0o077:
            raise PermissionError(f"{path} has mode {stat.S_IMODE(st.st_mode):04o}; other users could read it: chmod 600 {path}")
        with os.fdopen(fd, "r", closefd=False) as f:
            return f.read(4096).strip()
    finally:
        os.close(fd)


def find_connection(job: Optional[str] = None, service: Optional[str] = None, state_dir: Optional[str] = None) -> str:
    """The path of the connection file of a job (id), a service (name) or a state directory.

    Without any of them: the job of $SLURM_JOB_ID.
    """
    given = [x for x in (job, service, state_dir) if x]
    if len(given) > 1:
        raise ValueError("give one of job, service and state_dir")
    home = os.path.expanduser("~")
    if state_dir:
        path = state_dir if state_dir.endswith(".json") else os.path.join(state_dir, CONNECTION_FILE)
    elif service:
        path = os.path.join(home, SERVICES_DIR, service, CONNECTION_FILE)
    else:
        job = job or os.environ.get("SLURM_JOB_ID", "")
        if not job:
            raise NoConnection("give a job, a service or a state directory (or set OPENAI_BASE_URL, or run inside the job)")
        path = os.path.join(home, JOBS_DIR, str(job), CONNECTION_FILE)
    if not os.path.isfile(path):
        raise NoConnection(f"no connection file at {path}")
    return path


def read_connection(job: Optional[str] = None, service: Optional[str] = None, state_dir: Optional[str] = None) -> Connection:
    """The job's connection, from its file; from OPENAI_BASE_URL when no job is named and it is set."""
    env_url = os.environ.get("OPENAI_BASE_URL", "")
    if env_url and not (job or service or state_dir):
        return Connection(base_url=env_url.rstrip("/"), state="", model=os.environ.get("LLM_AGENT_MODEL", ""))
    path = find_connection(job, service, state_dir)
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    return Connection(
        base_url=d.get("base_url", "").rstrip("/"),
        state=d.get("state", ""),
        reason=d.get("reason", ""),
        job_id=str(d.get("job_id", "")),
        model=d.get("served_model_name", ""),
        api_key_file=d.get("api_key_file", ""),
        path=path,
    )


def _client_args(conn: Connection, kwargs: dict) -> dict:
    args = {"base_url": conn.base_url, "api_key": conn.api_key() or "none"}
    args.update(kwargs)
    return args


def _service_state(service: str) -> Tuple[str, str]:
    """The service's own state and its reason, from its file."""
    with open(find_connection(service=service), encoding="utf-8") as f:
        info = json.load(f).get("service") or {}
    return info.get("state", ""), info.get("reason", "")


class _Follower:
    """What both transports share: the job the service's file names now gets every request;
    one that the old job answers 503 because it handed the service over, or that cannot reach
    it, goes again to the job the file names once it names another. A request to a sleeping
    service wakes it first and waits until it serves."""

    def __init__(self, service: str, timeout: float, wake_timeout: Optional[float] = WAKE_TIMEOUT,
                 on_progress: Optional[Callable[[str], None]] = None):
        self.service = service
        self.timeout = timeout
        self.wake_timeout = wake_timeout
        self.on_progress = on_progress
        self.current = ""  # the base URL requests go to, once the service has moved
        self._waking = threading.Lock()

    def _progress(self, line: str) -> None:
        log.info("service %s: %s", self.service, line)
        if self.on_progress is not None:
            self.on_progress(line)

    def asleep(self) -> Optional[str]:
        """The service's state and reason while it sleeps or wakes; None while it serves."""
        try:
            state, reason = _service_state(self.service)
        except (OSError, ValueError, NoConnection):
            return None
        return f"{state}: {reason}" if state in SLEEP_STATES else None

    def before(self, request: httpx.Request) -> Optional[httpx.Response]:
        """Wakes a sleeping service and holds the request until it serves, then routes it; a
        client that does not wait (wake_timeout None or 0) gets 503 with Retry-After."""
        if self.asleep() is not None:
            with self._waking:  # one wake at a time; the others find it awake after
                state = self.asleep()
                if state is not None:
                    if not self.wake_timeout:
                        return httpx.Response(503, headers={"Retry-After": "30"}, request=request,
                                              json={"error": {"message": f"service {self.service} is {state}", "type": "service_asleep"}})
                    self._wake(state)
        self.route(request)
        return None

    def _wake(self, state: str) -> None:
        """Runs ``llm-agent service wake --wait D NAME``, passing its progress on, and takes the
        base URL of the job that serves once it does."""
        binary = os.environ.get("LLM_AGENT_BIN") or shutil.which("llm-agent")
        if not binary:
            raise ServiceAsleep(self.service, state + " (llm-agent is not on PATH to wake it: set LLM_AGENT_BIN)")
        start = time.monotonic()
        cmd = [binary, "service", "wake", "--wait", f"{max(1, int(self.wake_timeout))}s", "--by", "the Python client", self.service]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        watchdog = threading.Timer(self.wake_timeout + 30, proc.kill)
        watchdog.start()
        last = state
        try:
            for line in proc.stdout:
                line = line.strip()
                if line:
                    last = line
                    self._progress(line)
            rc = proc.wait()
        finally:
            watchdog.cancel()
        if rc != 0:
            raise ServiceAsleep(self.service, last, time.monotonic() - start)
        self.current = self._base()

    @staticmethod
    def handed_over(response: httpx.Response) -> bool:
        return response.status_code == 503 and SUCCESSOR_HEADER in response.headers

    def _base(self) -> str:
        try:
            return read_connection(service=self.service).base_url
        except (OSError, ValueError, NoConnection):
            return ""

    def successor(self, request: httpx.Request, timeout: Optional[float] = None) -> Optional[str]:
        """The service's base URL once the file names a job other than the one asked; None if
        it does not within the timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        asked = str(request.url)
        while True:
            base = self._base()
            if base and not asked.startswith(base.rstrip("/") + "/"):
                self.current = base
                return base
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.2)

    def route(self, request: httpx.Request) -> None:
        """Sends the request to the job that serves now, once the service has moved."""
        if self.current:
            self.moved(request, self.current)

    @staticmethod
    def moved(request: httpx.Request, base: str) -> None:
        new = httpx.URL(base)
        request.url = request.url.copy_with(scheme=new.scheme, host=new.host, port=new.port)
        request.headers["Host"] = request.url.netloc.decode("ascii")


class FollowTransport(httpx.BaseTransport):
    """An httpx transport that follows a service from job to job (see ``connect``)."""

    def __init__(self, service: str, inner: Optional[httpx.BaseTransport] = None, timeout: float = FOLLOW_TIMEOUT,
                 wake_timeout: Optional[float] = WAKE_TIMEOUT, on_progress: Optional[Callable[[str], None]] = None):
        self._follow = _Follower(service, timeout, wake_timeout, on_progress)
        self._inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        asleep = self._follow.before(request)
        if asleep is not None:
            return asleep
        try:
            response = self._inner.handle_request(request)
        except httpx.ConnectError:
            # The job is gone: its successor may serve already.
            base = self._follow.successor(request, timeout=0)
            if base is None:
                raise
            self._follow.moved(request, base)
            response = self._inner.handle_request(request)
        while self._follow.handed_over(response):
            response.close()
            base = self._follow.successor(request)
            if base is None:
                return self._inner.handle_request(request)
            self._follow.moved(request, base)
            response = self._inner.handle_request(request)
        return response

    def close(self) -> None:
        self._inner.close()


class AsyncFollowTransport(httpx.AsyncBaseTransport):
    """``FollowTransport`` for asyncio."""

    def __init__(self, service: str, inner: Optional[httpx.AsyncBaseTransport] = None, timeout: float = FOLLOW_TIMEOUT,
                 wake_timeout: Optional[float] = WAKE_TIMEOUT, on_progress: Optional[Callable[[str], None]] = None):
        self._follow = _Follower(service, timeout, wake_timeout, on_progress)
        self._inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        asleep = await asyncio.to_thread(self._follow.before, request)
        if asleep is not None:
            return asleep
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.ConnectError:
            base = await asyncio.to_thread(self._follow.successor, request, 0)
            if base is None:
                raise
            self._follow.moved(request, base)
            response = await self._inner.handle_async_request(request)
        while self._follow.handed_over(response):
            await response.aclose()
            base = await asyncio.to_thread(self._follow.successor, request)
            if base is None:
                return await self._inner.handle_async_request(request)
            self._follow.moved(request, base)
            response = await self._inner.handle_async_request(request)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def connect(job: Optional[str] = None, service: Optional[str] = None, state_dir: Optional[str] = None, *,
            wake_timeout: Optional[float] = WAKE_TIMEOUT, on_progress: Optional[Callable[[str], None]] = None,
            **kwargs) -> openai.OpenAI:
    """An ``openai.OpenAI`` for the job; keyword arguments go to the client (timeout, max_retries...).

    For a service, the client follows it from job to job: a request that the old job answers
    503 with the successor's address goes again to the job the service's file names. A request
    to a service that sleeps (``--idle-release``) wakes it (``llm-agent service wake``) and is
    held until the service serves, at most ``wake_timeout`` seconds (``ServiceAsleep`` then);
    ``on_progress`` gets each state on the way (queued, starting, serving). With
    ``wake_timeout=None`` such a request is answered 503 with Retry-After and the state.
    """
    if service and "http_client" not in kwargs:
        kwargs["http_client"] = httpx.Client(transport=FollowTransport(service, wake_timeout=wake_timeout, on_progress=on_progress))
    return openai.OpenAI(**_client_args(read_connection(job, service, state_dir), kwargs))


def connect_async(job: Optional[str] = None, service: Optional[str] = None, state_dir: Optional[str] = None, *,
                  wake_timeout: Optional[float] = WAKE_TIMEOUT, on_progress: Optional[Callable[[str], None]] = None,
                  **kwargs) -> openai.AsyncOpenAI:
    """An ``openai.AsyncOpenAI`` for the job; for a service it follows and wakes it as ``connect`` does."""
    if service and "http_client" not in kwargs:
        kwargs["http_client"] = httpx.AsyncClient(transport=AsyncFollowTransport(service, wake_timeout=wake_timeout, on_progress=on_progress))
    return openai.AsyncOpenAI(**_client_args(read_connection(job, service, state_dir), kwargs))


def _probe(conn: Connection, timeout: float = 5.0) -> Tuple[str, str]:
    """Asks the endpoint's /readyz (no key needed): ("ready", "") or ("not ready", why)."""
    root = conn.base_url[: -len("/v1")] if conn.base_url.endswith("/v1") else conn.base_url
    try:
        with urllib.request.urlopen(root + "/readyz", timeout=timeout) as resp:
            return ("ready", "") if resp.status == 200 else ("not ready", f"/readyz answered {resp.status}")
    except urllib.error.HTTPError as e:
        return "not ready", f"/readyz answered {e.code}"
    except (urllib.error.URLError, OSError) as e:
        return "unreachable", str(getattr(e, "reason", e))


def health(job: Optional[str] = None, service: Optional[str] = None, state_dir: Optional[str] = None) -> Tuple[str, str]:
    """The state and its reason: the connection file's, checked against the endpoint's /readyz.

    States are the agent's (starting, ready, restarting, stopping, stopped, failed); a file that
    says ready while /readyz does not answer gives "unreachable". From the environment, the
    state is /readyz's: "ready", "not ready" or "unreachable".
    """
    conn = read_connection(job, service, state_dir)
    if not conn.path:
        return _probe(conn)
    if conn.ready:
        state, why = _probe(conn)
        if state == "unreachable":
            return state, why
    return conn.state, conn.reason


def _ready_or_raise(job, service, state_dir) -> Optional[Connection]:
    conn = read_connection(job, service, state_dir)
    if conn.state in ENDED_STATES:
        raise JobEnded(conn)
    if conn.path:
        return conn if conn.ready and _probe(conn)[0] == "ready" else None
    return conn if _probe(conn)[0] == "ready" else None


def wait_ready(job: Optional[str] = None, service: Optional[str] = None, state_dir: Optional[str] = None,
               timeout: float = 600.0, poll: float = 1.0) -> Connection:
    """Waits until the job is ready (its file says so and /readyz answers) and returns its connection.

    Raises ``JobEnded`` when the job stops or fails first, ``TimeoutError`` after ``timeout``
    seconds, and ``NoConnection`` when the connection file does not appear within it.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = _ready_or_raise(job, service, state_dir)
            if conn is not None:
                return conn
        except NoConnection:
            if time.monotonic() >= deadline:
                raise
        if time.monotonic() >= deadline:
            raise TimeoutError(f"the job was not ready within {timeout:g} s (health: {health(job, service, state_dir)})")
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))


async def wait_ready_async(job: Optional[str] = None, service: Optional[str] = None, state_dir: Optional[str] = None,
                           timeout: float = 600.0, poll: float = 1.0) -> Connection:
    """``wait_ready`` for asyncio: the waiting does not block the event loop."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = await asyncio.to_thread(_ready_or_raise, job, service, state_dir)
            if conn is not None:
                return conn
        except NoConnection:
            if time.monotonic() >= deadline:
                raise
        if time.monotonic() >= deadline:
            raise TimeoutError(f"the job was not ready within {timeout:g} s")
        await asyncio.sleep(min(poll, max(0.0, deadline - time.monotonic())))


def models(job: Optional[str] = None, service: Optional[str] = None, state_dir: Optional[str] = None) -> list:
    """The ids of the models the endpoint serves (its /v1/models)."""
    return [m.id for m in connect(job, service, state_dir).models.list()]


def model(job: Optional[str] = None, service: Optional[str] = None, state_dir: Optional[str] = None) -> str:
    """The served model's name: the connection file's, else the first of /v1/models."""
    conn = read_connection(job, service, state_dir)
    return conn.model or models(job, service, state_dir)[0]
