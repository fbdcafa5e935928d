"""
Tests for L{fangs.runner.tap} and the C{fangs-runner} twistd plugin.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from fangs.runner import tap

DEFAULTS = {
    "orchestrator": "http://127.0.0.1:8443",
    "runner-id": socket.gethostname(),
    "tls-ca": None,
    "tls-cert": None,
    "tls-key": None,
    "max-concurrent": 1,
    "docker-image": "fangs-sandbox/node:20",
    "bpf-source": None,
    "cgroup-root": "/sys/fs/cgroup/unified",
}


def parse(*argv: str) -> dict:
    options = tap.Options()
    options.parseOptions(list(argv))
    return {k: options[k] for k in DEFAULTS}


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        self.assertEqual(parse(), DEFAULTS)

    def test_everything(self) -> None:
        self.assertEqual(
            parse("--orchestrator", "https://orch.example:8443", "--runner-id", "worker-1",
                  "--tls-ca", "ca.pem", "--tls-cert", "runner.pem", "--tls-key", "runner.key",
                  "--max-concurrent", "3", "--docker-image", "node:20-slim",
                  "--bpf-source", "/opt/sensor.c", "--cgroup-root", "/sys/fs/cgroup"),
            {
                "orchestrator": "https://orch.example:8443",
                "runner-id": "worker-1",
                "tls-ca": "ca.pem",
                "tls-cert": "runner.pem",
                "tls-key": "runner.key",
                "max-concurrent": 3,
                "docker-image": "node:20-slim",
                "bpf-source": "/opt/sensor.c",
                "cgroup-root": "/sys/fs/cgroup",
            },
        )

    def test_certNeedsKey(self) -> None:
        self.assertRaises(usage.UsageError, parse, "--orchestrator", "https://o",
                          "--tls-cert", "c.pem")
        self.assertRaises(usage.UsageError, parse, "--orchestrator", "https://o",
                          "--tls-key", "k.pem")

    def test_tlsNeedsHTTPS(self) -> None:
        self.assertRaises(usage.UsageError, parse, "--tls-ca", "ca.pem")

    def test_maxConcurrent(self) -> None:
        for bad in ("0", "-1", "two"):
            self.assertRaises(usage.UsageError, parse, "--max-concurrent", bad)

    def test_badURL(self) -> None:
        for bad in ("127.0.0.1:8443", "ftp://x", "http://"):
            self.assertRaises(usage.UsageError, parse, "--orchestrator", bad)


class KernelVersionTests(SynchronousTestCase):
    def test_read(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("6.1.0-18-amd64\n")
        self.assertEqual(tap.kernelVersion(path), "6.1.0-18-amd64")

    def test_missing(self) -> None:
        self.assertEqual(tap.kernelVersion(self.mktemp()), "linux-unknown")


class PluginTests(SynchronousTestCase):
    def test_serviceMaker(self) -> None:
        from twisted.plugins.fangs_runner import fangsRunner

        self.assertTrue(IServiceMaker.providedBy(fangsRunner))
        self.assertTrue(IPlugin.providedBy(fangsRunner))
        self.assertEqual(fangsRunner.tapname, "fangs-runner")
        self.assertIs(fangsRunner.options, tap.Options)

    def test_importIsLight(self) -> None:
        """
        Loading the plugin and the tap module imports neither BCC nor the
        docker SDK nor the reactor.
        """
        code = (
            "import sys\n"
            "import twisted.plugins.fangs_runner, fangs.runner.tap\n"
            "heavy = [m for m in ('bcc', 'docker', 'twisted.internet.reactor') "
            "if m in sys.modules]\n"
            "print(','.join(heavy))\n"
        )
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                             text=True, timeout=60)
        self.assertEqual((out.returncode, out.stdout.strip()), (0, ""), out.stderr)


class MakeServiceTests(SynchronousTestCase):
    def test_tree(self) -> None:
        """
        makeService builds the runner under a MultiService without starting
        anything (no BPF load, no Docker call, no connection).
        """
        try:
            import docker  # noqa: F401
        except ImportError:
            raise self.skipTest("the docker SDK is not installed")
        from twisted.application.service import MultiService

        from fangs.runner.service import RunnerService

        options = tap.Options()
        options.parseOptions(["--runner-id", "worker-9", "--max-concurrent", "2"])
        top = tap.makeService(options)
        self.assertIsInstance(top, MultiService)
        [runner] = [s for s in top if isinstance(s, RunnerService)]
        self.assertEqual(runner.runnerID, "worker-9")
        self.assertFalse(runner.running)
