"""
Tests for L{fangs.runner.egress}: the rules and policy resolution as plain
functions, the manager against fakes.  Real contained sandboxes (the real
kernel's packet rules, Docker, the real gateway and real npm) are in
L{tests.integration.runner.test_egress}.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fangs.runner import egress as E
from fangs.runner import bait
from fangs.runner.gateway import PolicyError
from fangs.runner.service import RunnerService
from fangs.runner.streamer import EventStreamer
from fangs.wire import SECOND, Job, SandboxSpec
from tests.runner.test_sandbox import ImmediatePool
from tests.runner.fakes import FakeCgroups, FakeClient, FakeSandbox, FakeSensor, runID


def job(n: int = 1, **spec: Any) -> Job:
    spec.setdefault("command", ["true"])
    return Job(run_id=runID(n), kind="sandbox_scan", duration=10 * SECOND, sandbox=SandboxSpec(**spec))


# ---------------------------------------------------------------------------
# Pure parts


class RuleTests(SynchronousTestCase):
    ports = E.Ports(tcp=40001, dnsUDP=40002, dnsTCP=40003, udp=40004)

    def test_everyPacketGoesToTheGateway(self) -> None:
        rules = [" ".join(r) for r in E.setupRules("ab" * 16, "fgX", "172.30.0.1", self.ports)]
        nat = E.chainName("ab" * 16, "N")
        self.assertIn("iptables -t nat -A %s -p udp --dport 53 -j DNAT --to-destination 172.30.0.1:40002" % nat, rules)
        self.assertIn("iptables -t nat -A %s -p tcp --dport 53 -j DNAT --to-destination 172.30.0.1:40003" % nat, rules)
        self.assertIn("iptables -t nat -A %s -p tcp -j DNAT --to-destination 172.30.0.1:40001" % nat, rules)
        self.assertIn("iptables -t nat -A %s -p udp -j DNAT --to-destination 172.30.0.1:40004" % nat, rules)
        # Nothing is forwarded, in either direction, and IPv6 is dropped.
        for rule in ("iptables -I FORWARD 1 -i fgX -j DROP", "iptables -I FORWARD 1 -o fgX -j DROP",
                     "iptables -I DOCKER-USER 1 -i fgX -j DROP", "ip6tables -I INPUT 1 -i fgX -j DROP",
                     "ip6tables -I FORWARD 1 -i fgX -j DROP"):
            self.assertIn(rule, rules)
        # The host accepts only the gateway's ports; the jumps come last.
        inp = E.chainName("ab" * 16, "I")
        self.assertEqual(rules.index("iptables -A %s -j DROP" % inp) + 1,
                         rules.index("iptables -I FORWARD 1 -i fgX -j DROP"))
        self.assertTrue(rules[14].endswith("-t nat -I PREROUTING 1 -i fgX -j " + nat))

    def test_teardownUndoesSetup(self) -> None:
        setup = E.setupRules("cd" * 16, "fgY", "10.0.0.1", self.ports)
        down = E.teardownRules("cd" * 16, "fgY")
        inserted = {tuple(r[:1] + r[r.index("-I") + 1:r.index("-I") + 2] + r[r.index("-I") + 3:])
                    for r in setup if "-I" in r}
        deleted = {tuple(r[:1] + r[r.index("-D") + 1:]) for r in down if "-D" in r}
        self.assertEqual(inserted, deleted)
        self.assertEqual(sum(1 for r in down if "-X" in r), 2)

    def test_names(self) -> None:
        hexID = runID(3).hex()
        self.assertLessEqual(len(E.bridgeName(hexID)), 15)
        self.assertLessEqual(len(E.chainName(hexID, "N")), 28)
        self.assertNotEqual(E.bridgeName(hexID), E.bridgeName(runID(4).hex()))

    def test_resolvePolicy(self) -> None:
        self.assertEqual(E.resolvePolicy(job()), E.RunPolicy("contain", ("registry.npmjs.org",)))
        self.assertEqual(E.resolvePolicy(job(egress_policy="Registry-Only", allowed_hosts=["npm.corp.example"])),
                         E.RunPolicy("registry-only", ("npm.corp.example",)))
        self.assertEqual(E.resolvePolicy(job(), "open", ["r.example"]), E.RunPolicy("open", ("r.example",)))
        for bad in (job(egress_policy="leaky"), job(allowed_hosts=["http://x"]), job(network_mode="mynet"),
                    job(network_mode="mynet", egress_policy="registry-only")):
            self.assertRaises(PolicyError, E.resolvePolicy, bad)
        self.assertEqual(E.resolvePolicy(job(network_mode="mynet", egress_policy="open")).mode, "open")


# ---------------------------------------------------------------------------
# The manager against fakes


class FakeReactor(Clock):
    def callFromThread(self, f, *args, **kw):
        f(*args, **kw)


class FakeDockerAPI:
    def __init__(self) -> None:
        self.created: List[Tuple[str, Dict[str, Any]]] = []
        self.removed: List[str] = []
        self.nets: List[Dict[str, Any]] = []

    def create_network(self, name: str, **kw: Any) -> Dict[str, str]:
        self.created.append((name, kw))
        return {"Id": "net-" + name}

    def inspect_network(self, netID: str) -> Dict[str, Any]:
        return {"IPAM": {"Config": [{"Subnet": "172.30.0.0/16", "Gateway": "172.30.0.1"}]}, "Containers": {}}

    def remove_network(self, netID: str) -> None:
        self.removed.append(netID)

    def networks(self, filters: Any = None) -> List[Dict[str, Any]]:
        return self.nets


class FakeGateway:
    def __init__(self, **kw: Any) -> None:
        self.kw = kw
        self.started = False
        self.closed = False
        self.canaries: Optional[Dict[str, str]] = None
        self.tcpPort, self.dnsUDPPort, self.dnsTCPPort, self.udpPort = 1, 2, 3, 4
        from fangs.runner.gateway import GatewayStats

        self.stats = GatewayStats()

    def start(self) -> None:
        self.started = True

    async def close(self) -> Any:
        self.closed = True
        return self.stats

    def setCanaries(self, canaries: Dict[str, str]) -> None:
        self.canaries = canaries


class ManagerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.api = FakeDockerAPI()
        self.commands: List[List[str]] = []
        self.failOn: Optional[str] = None
        self.gateways: List[FakeGateway] = []
        self.manager = E.EgressManager(FakeReactor(), lambda: self.api, command=self.command,
                                       gatewayFactory=self.gateway, threadpool=ImmediatePool())

    async def command(self, argv: Sequence[str], stdin: bytes = b"") -> Tuple[bytes, bytes, int]:
        self.commands.append(list(argv) + ([stdin.decode()] if stdin else []))
        if self.failOn and self.failOn in " ".join(argv) + stdin.decode():
            return b"", b"iptables: No chain/target/match by that name.\n", 1
        return b"", b"", 0

    def gateway(self, **kw: Any) -> FakeGateway:
        g = FakeGateway(**kw)
        self.gateways.append(g)
        return g

    def open(self, j: Job) -> Any:
        return Deferred.fromCoroutine(self.manager.open(j, 77, lambda t, p: None))

    def test_containedRun(self) -> None:
        egress = self.successResultOf(self.open(job(1)))
        name = E.networkName(runID(1).hex())
        self.assertEqual(egress.job.sandbox.network_mode, name)
        [(created, kw)] = self.api.created
        self.assertEqual(created, name)
        self.assertEqual(kw["options"]["com.docker.network.bridge.enable_ip_masquerade"], "false")
        [g] = self.gateways
        self.assertTrue(g.started)
        self.assertEqual((g.kw["address"], g.kw["cgroupID"], g.kw["policy"].mode), ("172.30.0.1", 77, "contain"))
        # One atomic iptables-restore per family.
        self.assertEqual([c[:3] for c in self.commands], [["iptables-restore", "-w", "--noflush"],
                                                          ["ip6tables-restore", "-w", "--noflush"]])
        self.assertIn("-I PREROUTING 1 -i %s -j %s" % (E.bridgeName(runID(1).hex()), E.chainName(runID(1).hex(), "N")),
                      self.commands[0][3])
        egress.baitPlanted(bait.makeBait(rsaBits=1024).canaries)
        self.assertIn("npm_token", g.canaries)
        self.successResultOf(Deferred.fromCoroutine(egress.close()))
        self.assertTrue(g.closed)
        self.assertEqual(self.api.removed, ["net-" + name])
        self.assertTrue(egress.tornDown.called)
        self.assertIn("-X " + E.chainName(runID(1).hex(), "N"), self.commands[2][3])
        self.assertEqual(len(self.commands), 4)

    def test_teardownFallsBackToOneRuleAtATime(self) -> None:
        egress = self.successResultOf(self.open(job(1)))
        self.failOn = "-D"
        self.successResultOf(Deferred.fromCoroutine(egress.close()))
        self.assertIn(["iptables", "-w", "-t", "nat", "-X", E.chainName(runID(1).hex(), "N")], self.commands)
        self.assertEqual(len(self.api.removed), 1)

    def test_restoreScripts(self) -> None:
        [(v4, s4), (v6, s6)] = E.restoreScripts(E.setupRules("ab" * 16, "fgX", "10.1.0.1", E.Ports(1, 2, 3, 4)))
        self.assertEqual((v4, v6), ("iptables-restore", "ip6tables-restore"))
        text = s4.decode()
        self.assertTrue(text.startswith("*filter\n:%s - [0:0]\n" % (E.chainName("ab" * 16, "I"),)), text)
        self.assertIn("*nat\n:%s - [0:0]\n" % (E.chainName("ab" * 16, "N"),), text)
        self.assertEqual(text.count("COMMIT"), 2)
        self.assertEqual(s6.decode().count("-j DROP"), 3)

    def test_ruleFailureFailsClosed(self) -> None:
        self.failOn = "PREROUTING"
        f = self.failureResultOf(self.open(job(1)), E.EgressError)
        self.assertIn("iptables-restore failed: iptables: No chain", str(f.value))
        self.assertTrue(self.gateways[0].closed)
        self.assertEqual(len(self.api.removed), 1)

    def test_openAndNone(self) -> None:
        for j in (job(1, egress_policy="open"), job(2, network_mode="none")):
            egress = self.successResultOf(self.open(j))
            self.assertIs(egress.job, j)
            self.assertIsNone(egress.gateway)
            egress.baitPlanted({})
            self.successResultOf(Deferred.fromCoroutine(egress.close()))
        self.assertEqual((self.api.created, self.commands, self.gateways), ([], [], []))

    def test_badPolicyRefused(self) -> None:
        self.failureResultOf(self.open(job(1, egress_policy="everything")), PolicyError)
        self.assertEqual(self.api.created, [])

    def test_reapStale(self) -> None:
        self.api.nets = [{"Id": "n1", "Labels": {E.LABEL_PID: "999999999", E.LABEL_RUN: "ab" * 16}},
                         {"Id": "n2", "Labels": {E.LABEL_PID: str(os.getpid()), E.LABEL_RUN: "cd" * 16}}]
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(self.manager.reapStale())), 1)
        self.assertEqual(self.api.removed, ["n1"])


class FakeEgress:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.log: List[Any] = []

    async def open(self, j: Job, cgroupID: int, sink: Any) -> Any:
        self.log.append(("open", j.run_id.hex(), cgroupID))
        if self.fail:
            raise E.EgressError("iptables missing")
        outer = self

        class Run:
            job = Job(run_id=j.run_id, kind=j.kind, duration=j.duration,
                      sandbox=SandboxSpec(command=["true"], network_mode="fangs-egress-x"))

            def baitPlanted(self, bait: Any) -> None:
                outer.log.append(("bait", bait))

            async def close(self) -> None:
                sink(12, {"Action": "cut"})
                outer.log.append(("close",))

        return Run()

    async def reapStale(self) -> int:
        self.log.append(("reap",))
        return 0


class ServiceHookTests(SynchronousTestCase):
    def service(self, egress: FakeEgress) -> Tuple[RunnerService, Clock, FakeClient, FakeSandbox]:
        clock, client, sandbox = Clock(), FakeClient(), FakeSandbox()
        svc = RunnerService(clock, client, FakeSensor(), sandbox, FakeCgroups(), runnerID="r1", hostname="h",
                            kernelVersion="6", retryPolicy=lambda a: 1.0, egress=egress,
                            streamerFactory=lambda c, cl, r: EventStreamer(c, cl, r, retryPolicy=lambda a: 1.0))
        svc.startService()
        self.addCleanup(lambda: (svc.stopService(), clock.advance(60)))
        return svc, clock, client, sandbox

    def test_containedLaunchAndClose(self) -> None:
        egress = FakeEgress()
        svc, clock, client, sandbox = self.service(egress)
        client.answerPoll(job(1))
        handle = sandbox.handles[runID(1).hex()]
        self.assertEqual(handle.spec.network_mode, "fangs-egress-x")
        self.assertEqual(egress.log[:2], [("reap",), ("open", runID(1).hex(), egress.log[1][2])])
        self.assertEqual(egress.log[2][0], "bait")
        handle.exit(0)
        clock.advance(3)
        self.assertEqual(egress.log[-1], ("close",))
        [result] = client.results
        self.assertEqual((result.status, result.events_emitted), ("ok", 1))  # the close's event is the run's

    def test_egressFailureFailsTheRun(self) -> None:
        svc, clock, client, sandbox = self.service(FakeEgress(fail=True))
        client.answerPoll(job(1))
        clock.advance(1)
        [result] = client.results
        self.assertEqual((result.status, result.reason), ("failed", "egress: iptables missing"))
        self.assertEqual(sandbox.handles, {})


# ---------------------------------------------------------------------------
# Real contained sandboxes


class StreamerBatchBytesTests(SynchronousTestCase):
    """
    Egress events carry up to 64 KiB of a body: batches are cut by size so
    no NDJSON line reaches the orchestrator's 1 MiB line limit.
    """

    def test_bigEventsSplitBatches(self) -> None:
        import json

        from fangs.orchestrator.site import MAX_NDJSON_LINE
        from tests.runner.fakes import FakeEventsClient

        client = FakeEventsClient()
        clock = Clock()
        s = EventStreamer(clock, client, runID(1))
        body = "A" * (88 * 1024)
        for i in range(40):
            s.add(12, {"Header": {"TsNs": i}, "Protocol": "http", "BodyB64": body})
        s.add(1, {"PathName": "/etc/passwd"})
        clock.advance(1)
        lines = [line for post in client.posts for line in post.consumer.data.splitlines() if line]
        self.assertGreater(len(lines), 5)
        self.assertTrue(all(len(line) < MAX_NDJSON_LINE for line in lines), [len(l) for l in lines])
        self.assertEqual(sum(len(json.loads(line)["events"]) for line in lines), 41)


class RunnerOptionsTests(SynchronousTestCase):
    def test_egressOptions(self) -> None:
        from twisted.python import usage

        from fangs.runner.tap import Options

        o = Options()
        o.parseOptions([])
        self.assertEqual((o["egress-policy"], o["egress-allowed-hosts"]), ("contain", ["registry.npmjs.org"]))
        o = Options()
        o.parseOptions(["--egress-policy", "registry-only", "--egress-allowed-hosts", "npm.corp.example, r.example:4873"])
        self.assertEqual((o["egress-policy"], o["egress-allowed-hosts"]),
                         ("registry-only", ["npm.corp.example", "r.example:4873"]))
        for bad in (["--egress-policy", "leaky"], ["--egress-allowed-hosts", "https://r.example"]):
            self.assertRaises(usage.UsageError, Options().parseOptions, bad)
