"""
The orchestrator's side of egress containment: the C{egress:} section of
C{conf/orchestrator.yaml} and the policy stamped on every sandbox job.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from fangs.orchestrator.config import ConfigError, OrchestratorConfig, defaultConfigPath, loadConfig
from tests.orchestrator.helpers import InMemoryOrchestrator


class ConfigTests(SynchronousTestCase):
    def load(self, text: str) -> OrchestratorConfig:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return loadConfig(path)

    def test_shippedDefaults(self) -> None:
        config = loadConfig(defaultConfigPath())
        self.assertEqual((config.egressPolicy, config.egressAllowedHosts), ("contain", ()))
        self.assertEqual(config.withRegistry("https://registry.npmjs.org").egressAllowedHosts, ("registry.npmjs.org",))

    def test_privateRegistry(self) -> None:
        config = self.load("egress: {policy: registry-only, allowed_hosts: [npm.corp.example:4873]}\n")
        self.assertEqual((config.egressPolicy, config.egressAllowedHosts), ("registry-only", ("npm.corp.example:4873",)))
        self.assertEqual(config.withRegistry("https://registry.npmjs.org"), config)
        self.assertEqual(OrchestratorConfig().withRegistry("http://npm.corp.example:4873/").egressAllowedHosts,
                         ("npm.corp.example:4873",))
        self.assertEqual(OrchestratorConfig().withRegistry("http://127.0.0.1:4873").egressAllowedHosts,
                         ("127.0.0.1:4873",))

    def test_bad(self) -> None:
        for text in ("egress: [1]\n", "egress: {policy: leaky}\n", "egress: {allowed_hosts: [https://x.example]}\n",
                     "egress: {allowed_hosts: [a b]}\n", "egress: {allowed_hosts: yes}\n"):
            self.assertRaises(ConfigError, self.load, text)


class StampTests(SynchronousTestCase):
    def orchestrator(self, config: OrchestratorConfig = OrchestratorConfig()) -> InMemoryOrchestrator:
        o = InMemoryOrchestrator(self, config=config.withRegistry("https://registry.npmjs.org"))
        o.register()
        return o

    def test_defaultsStamped(self) -> None:
        o = self.orchestrator()
        o.submit()
        sandbox = o.poll()[1]["sandbox"]
        self.assertEqual((sandbox["egress_policy"], sandbox["allowed_hosts"]), ("contain", ["registry.npmjs.org"]))

    def test_scanNamesItsOwn(self) -> None:
        o = self.orchestrator(OrchestratorConfig(egressPolicy="registry-only"))
        o.submit(sandbox={"image": "fangs-sandbox/node:20", "egress_policy": "Open", "allowed_hosts": ["npm.corp.example"]})
        sandbox = o.poll()[1]["sandbox"]
        self.assertEqual((sandbox["egress_policy"], sandbox["allowed_hosts"]), ("open", ["npm.corp.example"]))
        o.submit(sandbox={"image": "fangs-sandbox/node:20"})
        self.assertEqual(o.poll()[1]["sandbox"]["egress_policy"], "registry-only")

    def test_badPolicyIs400(self) -> None:
        o = self.orchestrator()
        image = "fangs-sandbox/node:20"
        for sandbox, words in (({"image": image, "egress_policy": "leaky"}, "egress_policy"),
                               ({"image": image, "allowed_hosts": ["a b"]}, "allowed_hosts"),
                               ({"image": image, "allowed_hosts": "registry.npmjs.org"}, "allowed_hosts")):
            status, body = o.call("POST", "/v1/scans", {"target_runner": "worker-1",
                                                        "Job": {"kind": "sandbox_scan", "sandbox": sandbox}})
            self.assertEqual(status, 400, body)
            self.assertIn(words, body["error"]["message"])


class RunPageTests(SynchronousTestCase):
    """
    The dashboard's run page lists the attempts the gateway stopped.
    """

    def test_listed(self) -> None:
        from treq.testing import StubTreq

        from fangs import wire
        from tests.orchestrator.helpers import runScan

        o = InMemoryOrchestrator(self)
        o.register()
        header = {"TsNs": 5, "PID": 0, "Type": 12, "Tags": 0}
        events = [
            {"type": 12, "payload": {"Header": header, "Protocol": "http", "Action": "sinkholed", "Method": "POST",
                                     "Host": "hooks.example", "Path": "/x", "DestName": "hooks.example",
                                     "DestPort": 80, "BodySize": 2150, "Canaries": ["npm_token"]}},
            {"type": 12, "payload": {"Header": header, "Protocol": "tls", "Action": "forwarded",
                                     "SNI": "registry.npmjs.org", "DestName": "registry.npmjs.org", "DestPort": 443}},
        ]
        runID = runScan(o, events)
        treq = StubTreq(o.api.resource())
        d = treq.get("http://orchestrator.test/ui/runs/" + runID)
        treq.flush()
        text = self.successResultOf(self.successResultOf(d).content()).decode()
        panel = text[text.index('id="egress"'):text.index('id="events"')]
        self.assertIn("tried POST http://hooks.example/x with 2.1 KiB containing the bait npm token (sinkholed)", panel)
        self.assertIn("bait</span>", panel)
        self.assertNotIn("registry.npmjs.org", panel)  # allowed traffic is not an attempt
        self.assertEqual(wire.EVENT_TYPE_NAMES[12], "egress_attempt")
