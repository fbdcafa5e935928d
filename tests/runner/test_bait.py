"""
Tests for L{fangs.runner.bait}: every bait parses as the real thing would,
differs from run to run, and its canaries are found where a stealer would
send them.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from twisted.trial.unittest import SynchronousTestCase

from fangs.runner import bait
from fangs.runner.canary import CanaryMatcher
from fangs.wire import WatchedPath

BASE62 = r"[0-9A-Za-z]"


_made: list = []


class BaitFormatTests(SynchronousTestCase):
    def setUp(self) -> None:
        if not _made:
            _made.extend([bait.makeBait(), bait.makeBait()])
        self.bait, self.other = _made

    def test_sshKeysParse(self) -> None:
        files = self.bait.files
        ed = load_ssh_private_key(files[".ssh/id_ed25519"].encode(), password=None)
        self.assertIsInstance(ed, ed25519.Ed25519PrivateKey)
        key = load_ssh_private_key(files[".ssh/id_rsa"].encode(), password=None)
        self.assertIsInstance(key, rsa.RSAPrivateKey)
        self.assertEqual(key.key_size, 2048)
        for name in ("id_ed25519", "id_rsa"):
            self.assertTrue(files[".ssh/" + name].startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n"))
            pub = files[".ssh/%s.pub" % (name,)]
            self.assertRegex(pub, r"^ssh-(ed25519|rsa) [A-Za-z0-9+/=]+ [a-z]+\d+@[a-z]+-[0-9a-f]{4}\n$")
            load_ssh_public_key(pub.encode())
        # The public key is the private key's.
        self.assertEqual(
            ed.public_key().public_bytes_raw(),
            load_ssh_public_key(files[".ssh/id_ed25519.pub"].encode()).public_bytes_raw(),
        )

    def test_sshKeysParseWithOpenSSH(self) -> None:
        if shutil.which("ssh-keygen") is None:
            self.skipTest("ssh-keygen not installed")
        for name in ("id_ed25519", "id_rsa"):
            path = self.mktemp()
            with open(path, "w") as f:
                f.write(self.bait.files[".ssh/" + name])
            import os

            os.chmod(path, 0o600)
            done = subprocess.run(["ssh-keygen", "-y", "-f", path], capture_output=True, text=True)
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertEqual(done.stdout.split()[:2], self.bait.files[".ssh/%s.pub" % (name,)].split()[:2])

    def test_awsKeys(self) -> None:
        text = self.bait.files[".aws/credentials"]
        m = re.match(r"^\[default\]\naws_access_key_id = (\S+)\naws_secret_access_key = (\S+)\n$", text)
        self.assertIsNotNone(m, text)
        for akid, secret in ((m.group(1), m.group(2)),
                             (self.bait.env["AWS_ACCESS_KEY_ID"], self.bait.env["AWS_SECRET_ACCESS_KEY"])):
            self.assertRegex(akid, r"^AKIA[A-Z2-7]{16}$")
            self.assertRegex(secret, r"^[A-Za-z0-9/+]{40}$")
        self.assertIn("region = ", self.bait.files[".aws/config"])

    def test_tokens(self) -> None:
        npmrc = self.bait.files[".npmrc"]
        m = re.match(r"^//registry\.npmjs\.org/:_authToken=(npm_%s{36})\n$" % (BASE62,), npmrc)
        self.assertIsNotNone(m, npmrc)
        tokens = [m.group(1), self.bait.env["NPM_TOKEN"], self.bait.env["GITHUB_TOKEN"]]
        self.assertRegex(self.bait.env["NPM_TOKEN"], r"^npm_%s{36}$" % (BASE62,))
        self.assertRegex(self.bait.env["GITHUB_TOKEN"], r"^ghp_%s{36}$" % (BASE62,))
        cred = self.bait.files[".git-credentials"]
        m = re.match(r"^https://([a-z]+\d+):(ghp_%s{36})@github\.com\n$" % (BASE62,), cred)
        self.assertIsNotNone(m, cred)
        tokens.append(m.group(2))
        hosts = yaml.safe_load(self.bait.files[".config/gh/hosts.yml"])
        self.assertEqual(hosts["github.com"]["git_protocol"], "https")
        self.assertRegex(hosts["github.com"]["oauth_token"], r"^gho_%s{36}$" % (BASE62,))
        tokens.append(hosts["github.com"]["oauth_token"])
        # The checksum these formats carry is right.
        for token in tokens:
            self.assertTrue(bait.tokenChecksumOK(token), token)
        self.assertFalse(bait.tokenChecksumOK(tokens[0][:-1] + ("A" if tokens[0][-1] != "A" else "B")))

    def test_gcloudADC(self) -> None:
        adc = json.loads(self.bait.files[".config/gcloud/application_default_credentials.json"])
        self.assertEqual(adc["type"], "authorized_user")
        self.assertTrue(adc["client_id"].endswith(".apps.googleusercontent.com"))
        self.assertRegex(adc["refresh_token"], r"^1//0[0-9][A-Za-z0-9_-]{98}$")

    def test_kubeConfig(self) -> None:
        conf = yaml.safe_load(self.bait.files[".kube/config"])
        self.assertEqual((conf["kind"], conf["current-context"]), ("Config", "prod"))
        cluster = conf["clusters"][0]["cluster"]
        self.assertRegex(cluster["server"], r"^https://[0-9A-F]{32}\.gr7\.[a-z0-9-]+\.eks\.amazonaws\.com$")
        cert = x509.load_pem_x509_certificate(base64.b64decode(cluster["certificate-authority-data"]))
        self.assertTrue(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        token = conf["users"][0]["user"]["token"]
        header, claims, signature = token.split(".")
        self.assertEqual(json.loads(base64.urlsafe_b64decode(header + "==")).get("alg"), "RS256")
        self.assertIn("serviceaccount", json.loads(base64.urlsafe_b64decode(claims + "=="))["sub"])
        self.assertEqual(len(base64.urlsafe_b64decode(signature + "==")), 256)

    def test_dockerConfig(self) -> None:
        conf = json.loads(self.bait.files[".docker/config.json"])
        auth = base64.b64decode(conf["auths"]["https://index.docker.io/v1/"]["auth"]).decode()
        user, _, pat = auth.partition(":")
        self.assertRegex(user, r"^[a-z]+\d+$")
        self.assertRegex(pat, r"^dckr_pat_[A-Za-z0-9_-]{27}$")

    def test_uniquePerRun(self) -> None:
        for name, value in self.bait.canaries.items():
            self.assertNotEqual(value, self.other.canaries[name], name)
        self.assertEqual(len(set(self.bait.canaries.values())), len(self.bait.canaries))
        secrets = [v for v in self.bait.canaries.values()]
        for rel, content in self.bait.files.items():
            # Every file holding a secret differs between runs; one holding
            # none (~/.aws/config: a region from a short list) may not.
            if any(v in content for v in secrets) or rel.endswith(".pub"):
                self.assertNotEqual(content, self.other.files[rel], rel)
        self.assertGreaterEqual(sum(1 for rel, c in self.bait.files.items() if any(v in c for v in secrets)), 8)

    def test_canariesAreInTheBaitAndFoundLeaving(self) -> None:
        everything = "\n".join(self.bait.files.values()) + "\n".join(self.bait.env.values())
        for name, value in self.bait.canaries.items():
            if name != "docker_auth":  # the file holds it base64-encoded
                self.assertIn(value, everything, name)
            self.assertGreaterEqual(len(value), 20, name)
        matcher = CanaryMatcher(self.bait.canaries)
        self.assertEqual(matcher.find(self.bait.files[".docker/config.json"].encode()), ["docker_auth"])
        # A stealer posting whole files, base64-encoded inside JSON.
        body = json.dumps({"f": base64.b64encode(self.bait.files[".ssh/id_rsa"].encode()).decode()}).encode()
        self.assertIn("ssh_rsa_key", matcher.find(body))
        self.assertEqual(matcher.find(self.bait.files[".npmrc"].encode()), ["npm_token"])
        self.assertEqual(matcher.find(("x=" + self.bait.env["GITHUB_TOKEN"]).encode()), ["env_github_token"])
        self.assertIn("ssh_ed25519_key", matcher.find(self.bait.files[".ssh/id_ed25519"].encode()))
        self.assertIn("kube_token", matcher.find(self.bait.files[".kube/config"].encode()))
        self.assertEqual(matcher.find(self.other.files[".npmrc"].encode()), [])

    def test_filesIn(self) -> None:
        files = self.bait.filesIn("/home/node/")
        self.assertIn("/home/node/.ssh/id_rsa", files)
        self.assertEqual(sorted(files), self.bait.pathsIn("/home/node"))
        self.assertIn("/.npmrc", self.bait.filesIn("/"))


class WatchedPathTests(SynchronousTestCase):
    def test_rootHome(self) -> None:
        job = [WatchedPath("/root/"), WatchedPath("/root/.ssh/", True), WatchedPath("/etc/")]
        added = bait.watchedPathsFor("/root", job)
        self.assertNotIn(WatchedPath("/root/.ssh/", True), added)  # already the job's
        self.assertIn(WatchedPath("/root/.config/gcloud/", True), added)
        self.assertIn(WatchedPath("/root/.git-credentials", True), added)
        self.assertFalse([p for p in added if not p.prefix.startswith("/root/")])

    def test_otherHomeMirrorsRootPaths(self) -> None:
        job = [WatchedPath("/root/"), WatchedPath("/root/.aws/", True), WatchedPath("/root/.gnupg/", True),
               WatchedPath("/etc/")]
        added = bait.watchedPathsFor("/home/node", job)
        self.assertIn(WatchedPath("/home/node/", False), added)
        self.assertIn(WatchedPath("/home/node/.gnupg/", True), added)
        for rel in bait.BAIT_PREFIXES:
            self.assertIn(WatchedPath("/home/node/" + rel, True), added)
        self.assertEqual(len(added), len({(p.prefix, p.cred_tagged) for p in added}))
        self.assertFalse([p for p in added if p.prefix.startswith("/etc")])

    def test_slashHome(self) -> None:
        added = bait.watchedPathsFor("/", [])
        self.assertIn(WatchedPath("/.ssh/", True), added)
