"""
Tests for L{fangs.runner.image}: the root filesystem assembly on a
temporary directory (the real images built by C{make setup}:
L{tests.integration.runner.test_image}).
"""

import io
import os
import shutil
import tempfile
from contextlib import redirect_stderr
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from fangs.runner import image
from tests import prereq


class RootTests(SynchronousTestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="fangs-image-test-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.root = self.tmp / "root"
        (self.root / "etc").mkdir(parents=True)
        (self.root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (self.root / "etc/group").write_text("root:x:0:\n")
        npm = self.tmp / "npm"
        (npm / "bin").mkdir(parents=True)
        (npm / "bin/npm-cli.js").write_text("// npm\n")
        (npm / "bin/npx-cli.js").write_text("// npx\n")
        self.npm = str(npm)
        self.ca = self.tmp / "ca.crt"
        self.ca.write_text("-----BEGIN CERTIFICATE-----\n")

    def test_sharedLibraries(self):
        libs = image.sharedLibraries("/bin/sh")
        self.assertTrue(any("libc.so" in lib for lib in libs), libs)
        self.assertTrue(all(lib.startswith("/") for lib in libs))

    def test_populateRoot(self):
        if os.geteuid() != 0:
            raise prereq.SkipTest("chown of the node home needs root")
        image.populateRoot(self.root, node="/bin/sh", npmDir=self.npm, caBundle=str(self.ca))
        self.assertTrue(os.access(self.root / "usr/bin/node", os.X_OK))
        self.assertEqual(os.readlink(self.root / "usr/bin/npm"), "../lib/node_modules/npm/bin/npm-cli.js")
        self.assertEqual(os.readlink(self.root / "usr/bin/npx"), "../lib/node_modules/npm/bin/npx-cli.js")
        self.assertTrue((self.root / "usr/lib/node_modules/npm/bin/npm-cli.js").exists())
        self.assertEqual((self.root / "etc/ssl/certs/ca-certificates.crt").read_text(), self.ca.read_text())
        self.assertIn("node:x:1000:1000:node:/home/node:/bin/sh\n", (self.root / "etc/passwd").read_text())
        self.assertEqual(os.stat(self.root / "home/node").st_uid, 1000)
        # The libraries node needs that the root lacks were copied.
        self.assertTrue(any(p.name.startswith("libc.so") for p in self.root.rglob("libc.so*")))

    def test_populateRootMissingNode(self):
        e = self.assertRaises(image.ImageError, image.populateRoot, self.root, node="/nonexistent/node",
                              npmDir=self.npm, caBundle=str(self.ca))
        self.assertIn("/nonexistent/node", str(e))

    def test_importFailureIsOneLine(self):
        e = self.assertRaises(image.ImageError, image.importRoot, self.tmp / "nope", "fangs-test/never:1")
        self.assertNotIn("\n", str(e))

    def test_mainNeedsAnAction(self):
        with redirect_stderr(io.StringIO()):
            self.assertRaises(SystemExit, image.main, [])

    def test_importChanges(self):
        self.assertIn("ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt", image.IMPORT_CHANGES)
