"""
Tests for L{fangs.egresstext}: the one line each egress attempt gets in
C{fangs run show} and on the dashboard.
"""

from twisted.trial.unittest import SynchronousTestCase

from fangs.egresstext import describeAttempt, size


class DescribeTests(SynchronousTestCase):
    def test_httpWithBait(self) -> None:
        self.assertEqual(
            describeAttempt({"Protocol": "http", "Action": "sinkholed", "Method": "POST", "Host": "hooks.example",
                             "Path": "/x", "DestName": "hooks.example", "DestPort": 80, "BodySize": 2150,
                             "Canaries": ["npm_token"]}),
            "tried POST http://hooks.example/x with 2.1 KiB containing the bait npm token (sinkholed)")

    def test_others(self) -> None:
        self.assertEqual(describeAttempt({"Protocol": "tls", "Action": "sinkholed", "SNI": "s.invalid", "DestPort": 443,
                                          "ALPN": ["h2"], "BodySize": 300}),
                         "tried TLS to s.invalid:443 (ALPN h2) with 300 B (sinkholed)")
        self.assertEqual(describeAttempt({"Protocol": "dns", "Action": "refused", "DestName": "x.invalid", "QType": "TXT"}),
                         "looked up x.invalid (TXT) (refused)")
        self.assertEqual(describeAttempt({"Protocol": "tcp", "Action": "cut", "Cut": "bytes", "DestIP": "172.18.0.1",
                                          "DestPort": 4444, "BodySize": 1048576,
                                          "Canaries": ["npm_token", "aws_secret_access_key"]}),
                         "tried TCP to 172.18.0.1:4444 with 1.0 MiB containing the baits npm token and AWS secret key"
                         " (cut: bytes limit)")
        self.assertEqual(describeAttempt({"Protocol": "tcp", "Action": "cut", "Cut": {"concurrent": 803, "time": 2}}),
                         "egress limits cut this run's traffic: 803 concurrent, 2 time")

    def test_hostilePayloadsNeverRaise(self) -> None:
        for p in (None, {}, {"Protocol": 5, "DestPort": "x", "Canaries": [1, None], "ALPN": "h2", "BodySize": "big"},
                  {"Action": "cut", "Cut": {"a": "b"}}):
            self.assertIsInstance(describeAttempt(p), str)

    def test_size(self) -> None:
        self.assertEqual([size(n) for n in (5, 2048, 3 * 1024 * 1024)], ["5 B", "2.0 KiB", "3.0 MiB"])


class SummariseTests(SynchronousTestCase):
    def test_cutFirstRepeatsCountedForwardedLeftOut(self) -> None:
        from fangs.egresstext import summarise

        get = {"Protocol": "http", "Action": "sinkholed", "Method": "GET", "Host": "f.invalid", "Path": "/f"}
        lines = summarise([{"Protocol": "dns", "Action": "forwarded", "DestName": "registry.npmjs.org"}, get, get, get,
                           {"Protocol": "tcp", "Action": "cut", "Cut": {"concurrent": 9}}])
        self.assertEqual(lines, ["egress limits cut this run's traffic: 9 concurrent",
                                 "tried GET http://f.invalid/f (sinkholed) \u00d73"])
