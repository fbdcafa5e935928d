"""
Real daemons for end-to-end tests: C{twistd -n fangs-orchestrator} and
C{twistd -n fangs-runner} as child processes on loopback, and a treq client
with its own connection pool (never treq's global one, which would leave the
reactor dirty).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from typing import Any, List, Optional

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = [os.path.join(os.path.dirname(sys.executable), "twistd")]


def freePort() -> int:
    """
    A loopback TCP port nothing listens on (at the moment of asking).
    """
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def httpClient(testCase: Any) -> HTTPClient:
    pool = HTTPConnectionPool(reactor, persistent=False)
    testCase.addCleanup(pool.closeCachedConnections)
    return HTTPClient(Agent(reactor, pool=pool))


async def jsonCall(client: HTTPClient, method: str, url: str, body: Any = None, raw: Optional[bytes] = None,
                   headers: Optional[dict] = None) -> Any:
    """
    One request with a JSON body (or C{raw} bytes, NDJSON for an events
    URL); returns C{(status, decoded JSON or None)}.
    """
    import json

    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = dict(headers or {})
    if data is not None:
        headers.setdefault("Content-Type", ["application/x-ndjson" if url.endswith("/events") else "application/json"])
    r = await client.request(method, url, data=data, headers=headers or None)
    content = await r.content()
    return r.code, (json.loads(content) if content.strip() else None)


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


class Daemon:
    """
    One twistd child process whose log goes to a file (shown on failure).
    """

    def __init__(self, testCase: Any, args: List[str], name: str, env: Optional[dict] = None) -> None:
        self.testCase = testCase
        self.args = args
        self.name = name
        self.env = dict(os.environ, **(env or {}))
        self.env["PYTHONPATH"] = REPO + os.pathsep + self.env.get("PYTHONPATH", "")
        self.proc: Optional[subprocess.Popen] = None
        fd, self.logPath = tempfile.mkstemp(prefix="fangs-%s-" % (name,), suffix=".log")
        os.close(fd)
        testCase.addCleanup(self.stop)

    def start(self) -> None:
        logFile = open(self.logPath, "ab")
        self.proc = subprocess.Popen(
            TWISTD + ["-n", "--pidfile=", "--logfile=-"] + self.args,
            stdout=logFile,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=self.env,
            start_new_session=True,
        )
        logFile.close()

    def log(self) -> str:
        with open(self.logPath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill(signal.SIGTERM)
        self.proc = None


class OrchestratorProcess(Daemon):
    def __init__(self, testCase: Any, db: Optional[str] = None, port: Optional[int] = None, extra: Optional[List[str]] = None,
                 artifacts: bool = False) -> None:
        self.port = port or freePort()
        self.db = db or os.path.join(tempfile.mkdtemp(prefix="fangs-db-"), "fangs.db")
        # Most tests scan made-up releases: fetching their tarballs from the
        # real registry would only add noise.  Tests of artifacts turn it on.
        quiet = [] if artifacts else ["--no-artifacts"]
        super().__init__(
            testCase,
            ["fangs-orchestrator", "--addr", "127.0.0.1:%d" % (self.port,), "--db", self.db] + quiet + (extra or []),
            "orchestrator",
        )
        self.url = "http://127.0.0.1:%d" % (self.port,)

    async def startAndWait(self, client: HTTPClient, timeout: float = 30.0) -> None:
        self.start()
        waited = 0.0
        while waited < timeout:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError("orchestrator exited:\n" + self.log())
            try:
                r = await client.get(self.url + "/v1/health")
                await r.content()
                if r.code == 200:
                    return
            except Exception:
                pass
            await sleep(0.2)
            waited += 0.2
        raise AssertionError("orchestrator did not answer within %ss:\n%s" % (timeout, self.log()))
