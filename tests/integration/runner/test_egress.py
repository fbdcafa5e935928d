"""
Real contained sandboxes (L{fangs.runner.egress}): real kernel rules, Docker,
the gateway and npm.  Needs root, Docker and the sandbox image
(L{requireEgress}).

No test sends traffic to a real outside address: the fixtures only use names
the gateway answers (C{*.exfil.invalid}), addresses of their own run network
and listeners this test opens on this host; npm reaches the npm registry
through the gateway.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from fangs.runner import egress as E
from fangs.runner import image as imagemod
from fangs.runner.gateway import Limits
from fangs.runner.sandbox import DockerSandbox, ExitInfo, npmInstallCommand
from fangs.wire import EventType, Job, RunID, SandboxSpec
from tests import prereq
from tests.integration.runner.test_sandbox import waitInstall


def requireEgress() -> None:
    prereq.requireSandboxImage()
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            prereq.missing("%s is not installed" % (tool,))


def hostAddresses() -> List[str]:
    """
    This host's global IPv4 addresses outside Docker's bridges.
    """
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True,
                         text=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        dev, addr = fields[1], fields[3].split("/")[0]
        if not dev.startswith(("docker", "br-", "fg", "veth")):
            found.append(addr)
    return found


def dockerBridgeAddress() -> str:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "docker0"], capture_output=True, text=True).stdout
    return out.split()[3].split("/")[0] if out.strip() else ""


class _Counting(Protocol):
    def connectionMade(self) -> None:
        self.factory.accepted.append(self.transport.getPeer())
        self.transport.loseConnection()


class HostService(Factory):
    """
    A service of the host itself, on every address: no sandbox may reach it.
    """

    protocol = _Counting

    def __init__(self) -> None:
        self.accepted: List[Any] = []


def fdCount() -> int:
    return len(os.listdir("/proc/self/fd"))


class RealEgressTests(TestCase):
    timeout = 400

    def setUp(self) -> None:
        requireEgress()
        self.sandbox = DockerSandbox(reactor, defaultImage=prereq.SANDBOX_IMAGE)

    async def fixtures(self) -> None:
        await deferToThread(imagemod.ensureFixturesImage, imagemod.FIXTURES_IMAGE, prereq.SANDBOX_IMAGE)

    async def contained(self, spec: SandboxSpec, manager: Optional[E.EgressManager] = None,
                        during: Any = None) -> Tuple[Any, str, List[Tuple[int, Dict[str, Any]]], Any, Any]:
        manager = manager or E.EgressManager(reactor)
        events: List[Tuple[int, Dict[str, Any]]] = []
        j = Job(run_id=RunID(os.urandom(16)), kind="sandbox_scan", sandbox=spec)
        egress = await manager.open(j, 0, lambda t, p: events.append((t, p)))
        self.addCleanup(lambda: Deferred.fromCoroutine(egress.close()))
        handle = await self.sandbox.launch(j.run_id, egress.job.sandbox, "")
        self.addCleanup(lambda: Deferred.fromCoroutine(handle.stop(timeout=0)))
        egress.baitPlanted(handle.canaries)
        if during is not None:
            await during(egress)
        # The init stays after the install: wait for the install's exit and
        # for what it left behind to end, as the runner does.
        info = ExitInfo(await waitInstall(handle))
        for _ in range(150):
            if not (await handle.snapshot()).processes:
                break
            await deferLater(reactor, 0.2, lambda: None)
        logs = await handle.logs(300)
        await handle.stop(timeout=0)
        stats = await egress.close()
        await egress.tornDown
        return info, logs, events, egress, stats

    def attempts(self, events: List[Tuple[int, Dict[str, Any]]]) -> List[Dict[str, Any]]:
        return [p for t, p in events if t == EventType.EGRESS_ATTEMPT]

    def assertCleanedUp(self, egress: Any) -> None:
        rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
        bridge = E.bridgeName(egress._runHex)
        self.assertNotIn(bridge, rules)
        self.assertNotIn(E.chainName(egress._runHex, "N"), rules)
        nets = subprocess.run(["docker", "network", "ls", "--format", "{{.Name}}"], capture_output=True, text=True).stdout
        self.assertNotIn(E.networkName(egress._runHex), nets)

    def test_registryInstallThroughTheGateway(self):
        async def go():
            info, logs, events, egress, stats = await self.contained(
                SandboxSpec(command=npmInstallCommand("is-number", "7.0.0"), user="0:0"))
            self.assertEqual(info.exitCode, 0, logs)
            self.assertIn("added 1 package", logs)
            attempts = self.attempts(events)
            self.assertTrue(any(a["Protocol"] == "tls" and a["Action"] == "forwarded"
                                and a["SNI"] == "registry.npmjs.org" for a in attempts), attempts)
            self.assertTrue(any(a["Protocol"] == "dns" and a["Action"] == "forwarded" for a in attempts))
            self.assertEqual([a for a in attempts if a["Action"] != "forwarded"], [])
            self.assertGreater(stats.forwarded, 0)
            self.assertCleanedUp(egress)

        return Deferred.fromCoroutine(go())

    def test_exfiltrationSinkholedAndRecorded(self):
        async def go():
            await self.fixtures()
            host = HostService()
            port = reactor.listenTCP(0, host, interface="0.0.0.0")
            self.addCleanup(port.stopListening)
            p = port.getHost().port
            targets = [(a, p) for a in [dockerBridgeAddress()] + hostAddresses() if a]
            self.assertTrue(targets)
            # Another run's contained network, its gateway listening: a
            # neighbour this run must not reach either.
            manager = E.EgressManager(reactor)
            neighbourEvents: List[Any] = []
            neighbour = await manager.open(Job(run_id=RunID(os.urandom(16)), kind="sandbox_scan",
                                               sandbox=SandboxSpec(command=["true"])), 0,
                                           lambda t, pl: neighbourEvents.append(pl))
            self.addCleanup(lambda: Deferred.fromCoroutine(neighbour.close()))
            neighbour.baitPlanted({})
            targets.append((neighbour.gateway.address, neighbour.gateway.tcpPort))
            env = {"FANGS_EGRESS_TARGETS": ",".join("%s:%d" % t for t in targets)}
            info, logs, events, egress, stats = await self.contained(SandboxSpec(
                image=imagemod.FIXTURES_IMAGE, command=npmInstallCommand("/fixtures/egress-exfil.tgz", ""),
                user="0:0", pull_policy="never", env=env), manager)
            self.assertEqual(info.exitCode, 0, logs)
            gw = egress.gateway.address
            for line in ("token found", "gateway " + gw, "lookup " + gw, "http 200", "https ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE",
                         "raw connected", "udp sent", "done yes"):
                self.assertIn("egress-exfil: " + line, logs, logs)
            attempts = self.attempts(events)
            self.assertEqual([a for a in attempts if a["Action"] == "forwarded"], [], attempts)
            self.assertEqual(stats.forwarded, 0)
            by = {(a["Protocol"], a.get("DestName") or a["DestIP"], a["DestPort"]): a for a in attempts}
            self.assertIn(("dns", "beacon.exfil.invalid", 53), by)
            self.assertEqual(by[("dns", "cmd.exfil.invalid", 53)]["QType"], "TXT")
            post = by[("http", "hooks.exfil.invalid", 80)]
            self.assertEqual((post["Action"], post["Method"], post["Path"], post["Canaries"]),
                             ("sinkholed", "POST", "/collect?id=1", ["npm_token"]))
            self.assertEqual(post["Headers"]["user-agent"], "stealer/1.0")
            self.assertGreater(post["BodySize"], 20)
            tls = by[("tls", "secure.exfil.invalid", 443)]
            self.assertEqual((tls["Action"], tls["SNI"]), ("sinkholed", "secure.exfil.invalid"))
            raw = by[("tcp", gw, 4444)]
            self.assertEqual(raw["Action"], "sinkholed")
            # The datagram's original destination, from the kernel's connection tracking.
            self.assertEqual(by[("udp", gw, 9999)]["Action"], "sinkholed")
            self.assertTrue(all(a["DestPort"] == 53 for a in attempts if a["Protocol"] == "dns"))
            for target in targets:
                self.assertEqual(by[("tcp",) + target]["Action"], "sinkholed")
            self.assertEqual(host.accepted, [])  # the host's own service was never reached
            self.assertEqual(neighbourEvents, [])  # nor the other run's gateway
            self.assertEqual(neighbour.gateway.stats.connections, 0)
            [canary] = [pl for t, pl in events if t == EventType.CANARY_EXFILTRATED]
            self.assertEqual((canary["Bait"], canary["Channel"], canary["DestName"]),
                             (["npm_token"], "egress", "hooks.exfil.invalid"))
            self.assertCleanedUp(egress)

        return Deferred.fromCoroutine(go())

    def test_registryOnlyRefuses(self):
        async def go():
            await self.fixtures()
            info, logs, events, egress, stats = await self.contained(SandboxSpec(
                image=imagemod.FIXTURES_IMAGE, command=npmInstallCommand("/fixtures/egress-exfil.tgz", ""),
                user="0:0", pull_policy="never", egress_policy="registry-only"))
            self.assertEqual(info.exitCode, 0, logs)
            self.assertIn("egress-exfil: lookup ENOTFOUND", logs)
            self.assertNotIn("egress-exfil: http 200", logs)
            attempts = self.attempts(events)
            actions = {a["Action"] for a in attempts}
            self.assertEqual(actions, {"refused"}, attempts)
            self.assertTrue(any(a["Protocol"] == "dns" and a["DestName"] == "beacon.exfil.invalid" for a in attempts))
            self.assertEqual((stats.sinkholed, stats.forwarded), (0, 0))
            self.assertCleanedUp(egress)

        return Deferred.fromCoroutine(go())

    def test_openIsTodaysBridge(self):
        async def go():
            info, logs, events, egress, stats = await self.contained(SandboxSpec(
                command=["sh", "-c", "cat /proc/net/route"], egress_policy="open"))
            self.assertEqual(info.exitCode, 0, logs)
            self.assertIsNone(egress.gateway)
            self.assertEqual(egress.job.sandbox.network_mode, "")  # the default bridge
            gateway = dockerBridgeAddress()
            self.assertIn("".join("%02X" % int(x) for x in reversed(gateway.split("."))), logs)
            self.assertEqual(events, [])

        return Deferred.fromCoroutine(go())

    def test_floodBoundedOtherRunUnaffected(self):
        async def go():
            await self.fixtures()
            manager = E.EgressManager(reactor)
            baseline = fdCount()
            peak = [0]

            def sample() -> None:
                peak[0] = max(peak[0], fdCount())

            from twisted.internet.task import LoopingCall

            sampler = LoopingCall(sample)
            sampler.start(0.2)
            self.addCleanup(lambda: sampler.running and sampler.stop())
            flood = Deferred.fromCoroutine(self.contained(SandboxSpec(
                image=imagemod.FIXTURES_IMAGE, command=npmInstallCommand("/fixtures/egress-flood.tgz", ""),
                user="0:0", pull_policy="never"), manager))
            other = Deferred.fromCoroutine(self.contained(SandboxSpec(
                image=imagemod.FIXTURES_IMAGE, command=npmInstallCommand("/fixtures/egress-exfil.tgz", ""),
                user="0:0", pull_policy="never"), manager))
            (finfo, flogs, fevents, fegress, fstats), (oinfo, ologs, oevents, oegress, ostats) = \
                await gatherResults([flood, other])
            sampler.stop()
            self.assertEqual(finfo.exitCode, 0, flogs)
            limits = Limits()
            self.assertLessEqual(fstats.connections, limits.maxConnections)
            # Thousands of connections tried: the gateway took at most its
            # limits and cut (and counted) hundreds more.
            self.assertGreater(fstats.cut.get("connections", 0) + fstats.cut.get("concurrent", 0), 300, fstats)
            self.assertGreaterEqual(fstats.cut.get("bytes", 0), 1, fstats)
            self.assertGreaterEqual(fstats.cut.get("time", 0), 2, fstats)  # the slow-loris pair
            self.assertLessEqual(fstats.sinkBytes, limits.maxSinkBytes)
            attempts = self.attempts(fevents)
            [summary] = [a for a in attempts if "Stats" in a]
            self.assertEqual((summary["Action"], summary["Cut"]), ("cut", fstats.cut))
            self.assertTrue(any(a["Action"] == "cut" and a.get("Cut") == "bytes" and a.get("Method") == "POST"
                                for a in attempts))
            self.assertLessEqual(len(attempts), limits.maxEvents + 1)
            self.assertEqual([a for a in attempts if a["Action"] == "forwarded" and a["Protocol"] != "dns"], [])
            # The runner's own file descriptors stayed bounded.
            self.assertLess(peak[0] - baseline, limits.maxConcurrent * 2 + 64, (baseline, peak[0]))
            # The other run, at the same time, was recorded in full.
            self.assertEqual(oinfo.exitCode, 0, ologs)
            self.assertIn("egress-exfil: http 200", ologs)
            post = [a for a in self.attempts(oevents) if a["Protocol"] == "http"]
            self.assertEqual([(a["Action"], a["Canaries"]) for a in post], [("sinkholed", ["npm_token"])])
            self.assertEqual(ostats.cut, {})
            self.assertCleanedUp(fegress)
            self.assertCleanedUp(oegress)

        return Deferred.fromCoroutine(go())
