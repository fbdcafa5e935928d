"""
L{fangs.runner.image} against Docker: the real sandbox and fixtures images.
"""

import subprocess

from twisted.trial.unittest import SynchronousTestCase

from fangs.runner import image
from tests import prereq


class RealImageTests(SynchronousTestCase):
    def test_sandboxImage(self):
        prereq.requireSandboxImage()
        out = subprocess.run(["docker", "run", "--rm", "--network", "none", prereq.SANDBOX_IMAGE, "sh", "-c",
                              'node --version; npm --version; echo "$NODE_EXTRA_CA_CERTS"; id node; '
                              "test -s /etc/ssl/certs/ca-certificates.crt && echo ca-ok"],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = out.stdout.splitlines()
        self.assertTrue(lines[0].startswith("v20."), lines)
        self.assertEqual(lines[2], "/etc/ssl/certs/ca-certificates.crt")
        self.assertIn("uid=1000(node) gid=1000(node)", lines[3])
        self.assertEqual(lines[4], "ca-ok")
        self.assertFalse(image.ensureSandboxImage(prereq.SANDBOX_IMAGE))  # present: nothing built

    def test_fixturesImage(self):
        prereq.requireSandboxImage()
        image.ensureFixturesImage(image.FIXTURES_IMAGE, prereq.SANDBOX_IMAGE)
        self.assertFalse(image.ensureFixturesImage(image.FIXTURES_IMAGE, prereq.SANDBOX_IMAGE))
        out = subprocess.run(["docker", "run", "--rm", "--network", "none", image.FIXTURES_IMAGE, "ls", "/fixtures"],
                             capture_output=True, text=True, timeout=60)
        listed = set(out.stdout.split())
        import json
        import re

        for d in sorted(p for p in image.FIXTURES_DIR.iterdir() if p.is_dir()):
            self.assertIn(d.name, listed)
            # npm names the tarball after the package; a plain release
            # version is dropped from the name, a pre-release's is kept.
            manifest = json.loads((d / "package.json").read_text())
            version = manifest["version"]
            tarball = manifest["name"] + ("" if re.fullmatch(r"[0-9][0-9.]*", version) else "-" + version) + ".tgz"
            self.assertIn(tarball, listed)
