"""
What the benchmarks share: a C{twistd fangs-orchestrator} child process,
plain-HTTP helpers, realistic events, and the table every figure is
reported to (C{report}, read by L{benchmarks.__main__}).
"""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: benchmarks/..
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

RESULTS: List[Tuple[str, str, str, str, str]] = []
#: Data behind the plots of the report, filled by the benchmarks that have some.
SERIES: Dict[str, Any] = {}


def report(area: str, figure: str, value: str, reference: str, ratio: str) -> None:
    RESULTS.append((area, figure, value, reference, ratio))
    print("%-10s %-58s %16s   ref %-28s %s" % (area, figure, value, reference, ratio), flush=True)


def raiseFileLimit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def freePort() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Orchestrator:
    """
    A C{twistd fangs-orchestrator} child process.
    """

    def __init__(self, extra: Optional[List[str]] = None, scheme: str = "http", certs: Optional[Dict[str, str]] = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="fangs-bench-")
        self.db = os.path.join(self.dir, "fangs.db")
        self.port = freePort()
        self.url = "%s://127.0.0.1:%d" % (scheme, self.port)
        self.log = open(os.path.join(self.dir, "orchestrator.log"), "wb")
        env = dict(os.environ, PYTHONPATH=REPO)
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "--logfile=" + os.path.join(self.dir, "twistd.log"),
             "fangs-orchestrator", "--addr", "127.0.0.1:%d" % (self.port,), "--db", self.db] + (extra or []),
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )
        import ssl
        import urllib.request

        context = None
        if certs is not None:
            context = ssl.create_default_context(cafile=certs["ca"])
            context.load_cert_chain(certs["client"], certs["client-key"])
        for _ in range(150):
            try:
                urllib.request.urlopen(self.url + "/v1/health", timeout=1, context=context).read()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("orchestrator did not start; see %s" % (self.dir,))

    def rssBytes(self) -> int:
        with open("/proc/%d/status" % (self.proc.pid,)) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def post(url: str, body: Any, headers: Optional[Dict[str, str]] = None) -> Tuple[int, Any]:
    import urllib.error
    import urllib.request

    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers or {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            content = r.read()
            return r.status, json.loads(content) if content else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


# ---------------------------------------------------------------------------
# Realistic events


_PATHS = [
    "/root/.npm/_cacache/content-v2/sha512/%02x/%02x/%s",
    "/root/.npm/_cacache/index-v5/%02x/%02x/%s",
    "/usr/lib/node_modules/npm/node_modules/%s/package.json",
    "/tmp/t/node_modules/%s/index.js",
    "/etc/ssl/certs/ca-certificates.crt",
    "/usr/lib/x86_64-linux-gnu/libc.so.6",
]


def realisticEvent(rng: random.Random, i: int) -> Dict[str, Any]:
    header = {
        "TsNs": 1_000_000_000 + i * 1000,
        "CgroupID": 4242,
        "RunID": [24, 178, 8, 156, 202, 190, 201, 128, 0, 0, 0, 0, 0, 0, 0, 1],
        "PID": 200 + i % 37,
        "TID": 200 + i % 37,
        "PPID": 199,
        "UID": 0,
        "GID": 0,
        "Type": 1,
        "Tags": 0,
    }
    r = rng.random()
    if r < 0.85:
        tmpl = rng.choice(_PATHS)
        h = "%040x" % rng.getrandbits(160)
        path = tmpl % (rng.getrandbits(8), rng.getrandbits(8), h) if tmpl.count("%") == 3 else (tmpl % ("pkg%d" % rng.randrange(300)) if "%s" in tmpl else tmpl)
        return {"type": 1, "payload": {"Header": header, "DFD": -100, "Flags": rng.choice([0, 0, 0, 524288, 577]), "PathLen": len(path), "Truncated": 0, "PathName": path, "CommStr": "node"}}
    if r < 0.93:
        header["Type"] = 2
        return {"type": 2, "payload": {"Header": header, "Argc": 3, "BinaryPathStr": "/bin/sh", "ArgvStrs": ["sh", "-c", "node install.js"], "CommStr": "sh"}}
    if r < 0.97:
        header["Type"] = 3
        return {"type": 3, "payload": {"Header": header, "Family": 2, "Source": 1, "DestPort": 443, "Sockfd": 21, "DestIP": "104.16.%d.%d" % (rng.randrange(256), rng.randrange(256)), "CommStr": "node"}}
    if r < 0.99:
        header["Type"] = 4
        return {"type": 4, "payload": {"Header": header, "Family": 2, "DestPort": 53, "QueryLen": 40, "QName": "registry.npmjs.org", "QType": 1, "DestIP": "127.0.0.11", "CommStr": "node"}}
    header["Type"] = 5
    return {"type": 5, "payload": {"Header": header, "Source": 3, "SourceName": "tcp_clienthello", "SniLen": 18, "SNI": "registry.npmjs.org", "DuplicateOf": "", "CommStr": "node"}}
