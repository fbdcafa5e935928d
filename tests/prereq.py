"""
Prerequisites of the end-to-end tests (root, the kernel's eBPF, Docker, the
sandbox image, PostgreSQL, Chromium).

Outside CI a missing prerequisite skips the test with the reason.  With
C{CI=true} or C{FANGS_E2E=require} it is a failure: CI must never go green
by skipping the real thing.
"""

import os
import shutil
import subprocess

from twisted.trial.unittest import SkipTest

SANDBOX_IMAGE = os.environ.get("FANGS_SANDBOX_IMAGE", "fangs-sandbox/node:20")


def required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("FANGS_E2E") == "require"


def missing(reason: str) -> None:
    """
    Skip, or fail when prerequisites are required.
    """
    if required():
        raise AssertionError("end-to-end prerequisite missing (CI=true): " + reason)
    raise SkipTest(reason)


def requireRoot() -> None:
    if os.geteuid() != 0:
        missing("needs root")


def requireBPF() -> None:
    requireRoot()
    try:
        import bcc  # noqa: F401
    except ImportError as e:
        missing("BCC is not importable (%s); run `make setup`" % (e,))
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        missing("kernel has no BTF")
    if not os.path.exists("/lib/modules/%s/build" % (os.uname().release,)):
        missing("no kernel headers link; run `make setup`")


def requireDocker() -> None:
    requireRoot()
    if shutil.which("docker") is None:
        missing("docker CLI not installed; run `make setup`")
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        missing("dockerd is not running; run `make setup`")


def requireSandboxImage() -> None:
    requireDocker()
    if subprocess.run(["docker", "image", "inspect", SANDBOX_IMAGE], capture_output=True).returncode != 0:
        missing("sandbox image %s missing; run `make setup`" % (SANDBOX_IMAGE,))
