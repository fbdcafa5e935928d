"""
Tests for L{fangs.runner.canary}.
"""

import base64
import binascii
import json
import urllib.parse

from twisted.trial.unittest import SynchronousTestCase

from fangs.runner.canary import CanaryMatcher, encodings

TOKEN = "npm_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


class CanaryMatcherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.matcher = CanaryMatcher({"npm_token": TOKEN, "aws_secret_access_key": SECRET})

    def test_raw(self) -> None:
        self.assertEqual(self.matcher.find(b"POST /x\r\n\r\ntoken=" + TOKEN.encode()), ["npm_token"])

    def test_nothing(self) -> None:
        self.assertEqual(self.matcher.find(b"GET / HTTP/1.1\r\nHost: registry.npmjs.org\r\n\r\n"), [])
        self.assertEqual(self.matcher.find(b""), [])

    def test_base64InsideDocument(self) -> None:
        """
        The value is found inside a larger base64 document, at every alignment.
        """
        for prefix in ("", "a", "ab", '{"k":"'):
            doc = json.dumps({"p": prefix, "secret": SECRET}).encode()
            for enc in (base64.b64encode, base64.urlsafe_b64encode):
                self.assertEqual(self.matcher.find(enc(prefix.encode() + doc)), ["aws_secret_access_key"])

    def test_doubleBase64(self) -> None:
        self.assertEqual(self.matcher.find(base64.b64encode(base64.b64encode(TOKEN.encode()))), ["npm_token"])

    def test_hexAndURL(self) -> None:
        self.assertEqual(self.matcher.find(binascii.hexlify(SECRET.encode())), ["aws_secret_access_key"])
        self.assertEqual(self.matcher.find(binascii.hexlify(SECRET.encode()).upper()), ["aws_secret_access_key"])
        self.assertEqual(self.matcher.find(b"q=" + urllib.parse.quote(SECRET, safe="").encode()),
                         ["aws_secret_access_key"])

    def test_dnsLabels(self) -> None:
        """
        A hex-encoded value split over DNS labels is found in the name.
        """
        h = binascii.hexlify(TOKEN.encode()).decode()
        name = ".".join([h[:30], h[30:60], h[60:], "exfil", "example"])
        self.assertEqual(self.matcher.findInName(name), ["npm_token"])
        b32 = base64.b32encode(TOKEN.encode()).decode().rstrip("=").lower()
        self.assertEqual(self.matcher.findInName(b32[:40] + "." + b32[40:] + ".x.test"), ["npm_token"])

    def test_shortPatternsDropped(self) -> None:
        self.assertTrue(all(len(p) >= 12 for p in encodings("abc")))
        self.assertFalse(CanaryMatcher({"x": "abc"}))
