"""
mTLS cost (run by C{make bench}): C{GET /v1/health} requests per second over
keep-alive connections with mutual TLS next to plain HTTP, and the rate of
new mutual-TLS handshakes next to new plain connections, each pair measured
against orchestrators started in the same run.
"""

from __future__ import annotations

import http.client
import os
import ssl
import tempfile
import threading
import time
from typing import Any, Callable, Optional

from fangs import pki

SECONDS = 5.0
THREADS = 4


def _certs(directory: str) -> dict:
    ca, caKey = pki.makeCA()
    paths = {}

    def write(name: str, data: bytes) -> str:
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    paths["ca"] = write("ca.pem", pki.certPEM(ca))
    cert, key = pki.issue(ca, caKey, "fangs-orchestrator", "server", ["127.0.0.1"])
    paths["server"], paths["server-key"] = write("server.pem", pki.certPEM(cert)), write("server-key.pem", pki.keyPEM(key))
    cert, key = pki.issue(ca, caKey, "bench-operator", "operator")
    paths["client"], paths["client-key"] = write("client.pem", pki.certPEM(cert)), write("client-key.pem", pki.keyPEM(key))
    return paths


def _rate(connect: Callable[[], Any], keepAlive: bool) -> float:
    count = [0]
    stop = time.monotonic() + SECONDS
    lock = threading.Lock()

    def worker() -> None:
        n = 0
        conn = connect() if keepAlive else None
        while time.monotonic() < stop:
            c = conn if keepAlive else connect()
            c.request("GET", "/v1/health")
            r = c.getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError("health answered %d" % (r.status,))
            if not keepAlive:
                c.close()
            n += 1
        if conn is not None:
            conn.close()
        with lock:
            count[0] += n

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return count[0] / (time.monotonic() - start)


def main(report: Callable[..., None]) -> None:
    from benchmarks.common import Orchestrator

    directory = tempfile.mkdtemp(prefix="fangs-bench-tls-")
    c = _certs(directory)
    plain = Orchestrator()
    mtls = Orchestrator(["--tls-cert", c["server"], "--tls-key", c["server-key"], "--tls-client-ca", c["ca"]], scheme="https", certs=c)
    try:
        ctx = ssl.create_default_context(cafile=c["ca"])
        ctx.load_cert_chain(c["client"], c["client-key"])
        tlsConnect = lambda: http.client.HTTPSConnection("127.0.0.1", mtls.port, context=ctx, timeout=10)
        plainConnect = lambda: http.client.HTTPConnection("127.0.0.1", plain.port, timeout=10)
        plainRate = _rate(plainConnect, True)
        tlsRate = _rate(tlsConnect, True)
        report("mtls", "GET /v1/health req/s, keep-alive, mutual TLS (%d clients)" % (THREADS,), "%.0f/s" % tlsRate,
               "plain HTTP %.0f/s" % plainRate, "ratio %.2f (target >= 0.7)" % (tlsRate / plainRate))
        plainNew = _rate(plainConnect, False)
        tlsNew = _rate(tlsConnect, False)
        report("mtls", "new connections/s with a full mutual-TLS handshake (ECDSA P-256)", "%.0f/s" % tlsNew,
               "new plain connections %.0f/s" % plainNew, "ratio %.2f" % (tlsNew / plainNew))
    finally:
        plain.stop()
        mtls.stop()
