# -*- test-case-name: tests.runner.test_egress -*-
"""
Egress containment of a sandboxed run: its own Docker network, host packet
rules that send every packet from it to the run's L{RunGateway}, and the
gateway itself.

Mechanism (see C{docs/egress.md} for why this one): a user-defined Docker
bridge network per run (masquerading and inter-container traffic off), whose
bridge is the only way out of the sandbox.  The sandbox keeps a default
route to the bridge's address, so whatever address it tries (a real one, the
metadata address C{169.254.169.254}, a private range, the host's own
addresses, a raw IP never looked up) the packet arrives on the bridge, where
the rules installed here act before routing:

  - nat PREROUTING, packets in on the run's bridge: UDP and TCP to port 53
    are DNATed to the gateway's DNS listeners, every other TCP connection to
    the gateway's TCP listener (which reads the original destination with
    C{SO_ORIGINAL_DST}), every other UDP datagram to its UDP sink;
  - filter INPUT, packets in on the bridge: only the gateway's four ports on
    the gateway address are accepted, everything else (ICMP, other
    protocols, other ports of the host) is dropped;
  - filter FORWARD and DOCKER-USER: nothing in from or out to the bridge is
    ever forwarded (so nothing is routed anywhere, whatever DNAT missed);
  - IPv6 is turned off on the bridge and every IPv6 packet on it dropped.

Nothing is routed out of the host: the gateway, a Twisted service in the
runner process, is the only peer, and only it connects out (to the allowed
registry hosts).  Policies: C{contain} (sinkhole and record), C{registry-only}
(record and refuse), C{open} (today's default bridge, logged loudly).
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import attrs
import docker
from docker import errors as dockerErrors
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread, deferToThreadPool
from twisted.logger import Logger

from fangs.runner.gateway import (
    CONTAIN,
    OPEN,
    POLICIES,
    GatewayPolicy,
    GatewayStats,
    Limits,
    PolicyError,
    RunGateway,
    parseAllowedHosts,
)
from fangs.wire import Job

log = Logger()

DEFAULT_POLICY = CONTAIN
DEFAULT_ALLOWED_HOSTS = ("registry.npmjs.org",)

LABEL_ROLE = "io.fangs.role"
LABEL_RUN = "io.fangs.run"
LABEL_PID = "io.fangs.runner-pid"
ROLE = "egress"


class EgressError(Exception):
    """
    Containment could not be set up; the run must not start.  One line.
    """


# ---------------------------------------------------------------------------
# Names and rules (pure)


def _digest(runHex: str) -> str:
    return hashlib.sha256(runHex.encode()).hexdigest()[:12]


def networkName(runHex: str) -> str:
    return "fangs-egress-" + runHex


def bridgeName(runHex: str) -> str:
    """
    The run's bridge interface (at most 15 characters).
    """
    return "fg" + _digest(runHex)


def chainName(runHex: str, kind: str) -> str:
    return "FANGS-%s-%s" % (_digest(runHex), kind)


@attrs.frozen
class Ports:
    tcp: int
    dnsUDP: int
    dnsTCP: int
    udp: int


def setupRules(runHex: str, bridge: str, gateway: str, ports: Ports) -> List[List[str]]:
    """
    The C{iptables}/C{ip6tables} commands (argv, without C{-w}) that contain
    the run's bridge.  Jumps are inserted last, once their chains are full.
    """
    nat, inp = chainName(runHex, "N"), chainName(runHex, "I")
    gw = gateway
    v4 = [
        ["-t", "nat", "-N", nat],
        ["-t", "nat", "-A", nat, "-p", "udp", "--dport", "53", "-j", "DNAT", "--to-destination", "%s:%d" % (gw, ports.dnsUDP)],
        ["-t", "nat", "-A", nat, "-p", "tcp", "--dport", "53", "-j", "DNAT", "--to-destination", "%s:%d" % (gw, ports.dnsTCP)],
        ["-t", "nat", "-A", nat, "-p", "tcp", "-j", "DNAT", "--to-destination", "%s:%d" % (gw, ports.tcp)],
        ["-t", "nat", "-A", nat, "-p", "udp", "-j", "DNAT", "--to-destination", "%s:%d" % (gw, ports.udp)],
        ["-N", inp],
        ["-A", inp, "-d", gw, "-p", "tcp", "-m", "multiport", "--dports", "%d,%d" % (ports.tcp, ports.dnsTCP), "-j", "ACCEPT"],
        ["-A", inp, "-d", gw, "-p", "udp", "-m", "multiport", "--dports", "%d,%d" % (ports.dnsUDP, ports.udp), "-j", "ACCEPT"],
        ["-A", inp, "-j", "DROP"],
        ["-I", "FORWARD", "1", "-i", bridge, "-j", "DROP"],
        ["-I", "FORWARD", "1", "-o", bridge, "-j", "DROP"],
        ["-I", "DOCKER-USER", "1", "-i", bridge, "-j", "DROP"],
        ["-I", "DOCKER-USER", "1", "-o", bridge, "-j", "DROP"],
        ["-I", "INPUT", "1", "-i", bridge, "-j", inp],
        ["-t", "nat", "-I", "PREROUTING", "1", "-i", bridge, "-j", nat],
    ]
    v6 = [
        ["-I", "INPUT", "1", "-i", bridge, "-j", "DROP"],
        ["-I", "FORWARD", "1", "-i", bridge, "-j", "DROP"],
        ["-I", "FORWARD", "1", "-o", bridge, "-j", "DROP"],
    ]
    return [["iptables"] + r for r in v4] + [["ip6tables"] + r for r in v6]


def teardownRules(runHex: str, bridge: str) -> List[List[str]]:
    """
    The commands that undo L{setupRules} (each may fail harmlessly when its
    rule is already gone).
    """
    nat, inp = chainName(runHex, "N"), chainName(runHex, "I")
    v4 = [
        ["-t", "nat", "-D", "PREROUTING", "-i", bridge, "-j", nat],
        ["-D", "INPUT", "-i", bridge, "-j", inp],
        ["-D", "FORWARD", "-i", bridge, "-j", "DROP"],
        ["-D", "FORWARD", "-o", bridge, "-j", "DROP"],
        ["-D", "DOCKER-USER", "-i", bridge, "-j", "DROP"],
        ["-D", "DOCKER-USER", "-o", bridge, "-j", "DROP"],
        ["-t", "nat", "-F", nat],
        ["-t", "nat", "-X", nat],
        ["-F", inp],
        ["-X", inp],
    ]
    v6 = [
        ["-D", "INPUT", "-i", bridge, "-j", "DROP"],
        ["-D", "FORWARD", "-i", bridge, "-j", "DROP"],
        ["-D", "FORWARD", "-o", bridge, "-j", "DROP"],
    ]
    return [["iptables"] + r for r in v4] + [["ip6tables"] + r for r in v6]


# ---------------------------------------------------------------------------
# Blocking parts (docker SDK, /proc/sys) on a thread


def _thd_createNetwork(api: Any, name: str, bridge: str, labels: Dict[str, str]) -> Dict[str, str]:
    try:
        created = api.create_network(
            name, driver="bridge", internal=False, check_duplicate=True, labels=labels,
            options={
                "com.docker.network.bridge.name": bridge,
                "com.docker.network.bridge.enable_ip_masquerade": "false",
                "com.docker.network.bridge.enable_icc": "false",
            })
        netID = created["Id"]
        info = api.inspect_network(netID)
        config = (info.get("IPAM") or {}).get("Config") or []
        if not config or not config[0].get("Gateway"):
            raise EgressError("network %s has no gateway address" % (name,))
    except dockerErrors.APIError as e:
        raise EgressError("create network %s: %s" % (name, " ".join(str(e.explanation or e).split())[:300])) from None
    try:
        with open("/proc/sys/net/ipv6/conf/%s/disable_ipv6" % (bridge,), "w") as f:
            f.write("1")
    except OSError as e:
        log.warn("could not turn IPv6 off on {bridge}: {error} (IPv6 is still dropped)", bridge=bridge, error=str(e))
    return {"id": netID, "gateway": config[0]["Gateway"], "subnet": config[0].get("Subnet", "")}


def _thd_removeNetwork(api: Any, netID: str) -> None:
    try:
        info = api.inspect_network(netID)
        for cid in (info.get("Containers") or {}):
            try:
                api.disconnect_container_from_network(cid, netID, force=True)
            except dockerErrors.APIError:
                pass
        api.remove_network(netID)
    except dockerErrors.NotFound:
        pass


def _thd_staleNetworks(api: Any, ownPid: int, alive: Callable[[int], bool]) -> List[Tuple[str, str]]:
    stale = []
    for net in api.networks(filters={"label": LABEL_ROLE + "=" + ROLE}):
        labels = net.get("Labels") or {}
        pid = labels.get(LABEL_PID, "")
        if pid.isdigit() and (int(pid) == ownPid or alive(int(pid))):
            continue
        stale.append((net["Id"], labels.get(LABEL_RUN, "")))
    return stale


def _alive(pid: int) -> bool:
    return os.path.exists("/proc/%d" % (pid,))


def _thd_run(argv: Sequence[str], stdin: bytes) -> Tuple[bytes, bytes, int]:
    import subprocess

    done = subprocess.run(list(argv), input=stdin, capture_output=True, timeout=60)
    return done.stdout, done.stderr, done.returncode


async def runCommand(argv: Sequence[str], stdin: bytes = b"") -> Tuple[bytes, bytes, int]:
    """
    Run a command on a pool thread: C{(stdout, stderr, code)}.
    """
    return await deferToThread(_thd_run, argv, stdin)


def restoreScripts(rules: Sequence[Sequence[str]]) -> List[Tuple[str, bytes]]:
    """
    The C{iptables} commands of L{setupRules} or L{teardownRules} as one
    C{iptables-restore --noflush} input per family (one process and one
    atomic commit each, instead of one process per rule).
    """
    out: List[Tuple[str, bytes]] = []
    for binary in ("iptables", "ip6tables"):
        tables: Dict[str, List[str]] = {}
        for argv in rules:
            if argv[0] != binary:
                continue
            args = list(argv[1:])
            table = "filter"
            if args[:1] == ["-t"]:
                table, args = args[1], args[2:]
            line = ":%s - [0:0]" % (args[1],) if args[0] == "-N" else " ".join(args)
            tables.setdefault(table, []).append(line)
        if tables:
            text = "".join("*%s\n%s\nCOMMIT\n" % (t, "\n".join(lines)) for t, lines in sorted(tables.items()))
            out.append((binary + "-restore", text.encode()))
    return out


# ---------------------------------------------------------------------------
# Per run


@attrs.frozen
class RunPolicy:
    """
    The egress a job asked for, resolved against the runner's defaults.
    """

    mode: str
    allowedHosts: Tuple[str, ...]


def resolvePolicy(job: Job, defaultPolicy: str = DEFAULT_POLICY,
                  defaultHosts: Sequence[str] = DEFAULT_ALLOWED_HOSTS) -> RunPolicy:
    """
    The run's policy: the job's C{egress_policy} and C{allowed_hosts} or the
    runner's defaults.  Raises L{PolicyError}.
    """
    spec = job.sandbox
    mode = (getattr(spec, "egress_policy", "") or defaultPolicy).strip().lower()
    if mode not in POLICIES:
        raise PolicyError("egress_policy %r is not one of %s" % (mode, ", ".join(POLICIES)))
    hosts = tuple(getattr(spec, "allowed_hosts", None) or defaultHosts)
    parseAllowedHosts(hosts)
    network = (spec.network_mode if spec is not None else "") or ""
    if mode != OPEN and network not in ("", "bridge", "none"):
        raise PolicyError("network_mode %r cannot be contained; use egress_policy open to run on it" % (network,))
    return RunPolicy(mode, hosts)


class RunEgress:
    """
    The containment of one run, from L{EgressManager.open} to L{close}.

    @ivar job: the job to launch (its sandbox on the run's network).
    @ivar gateway: the L{RunGateway}, or C{None} (policy C{open}, or no
        network at all).
    """

    def __init__(self, manager: "EgressManager", job: Job, policy: Optional[RunPolicy],
                 gateway: Optional[RunGateway] = None, networkID: str = "", runHex: str = "",
                 bridge: str = "") -> None:
        self._manager = manager
        self.job = job
        self.policy = policy
        self.gateway = gateway
        self.networkID = networkID
        self._runHex = runHex
        self._bridge = bridge
        self._closed = False
        #: Fires once the run's rules and network are removed (after L{close}).
        self.tornDown: Deferred = Deferred()
        if gateway is None:
            self.tornDown.callback(None)

    def baitPlanted(self, canaries: Mapping[str, str]) -> None:
        """
        The run's bait is known (its container was created): the gateway
        looks for these values (bait name -> value, the sandbox's
        C{handle.canaries}) from now on.
        """
        if self.gateway is not None:
            self.gateway.setCanaries(dict(canaries))

    async def close(self) -> Optional[GatewayStats]:
        """
        Take the run's rules, gateway and network down (after its container
        is gone).  Never raises; returns the gateway's counters.
        """
        if self._closed or self.gateway is None:
            return self.gateway.stats if self.gateway is not None else None
        self._closed = True
        stats = await self.gateway.close()
        # The container is gone: nothing can use the network any more, so its
        # rules and the network itself go down without holding up the
        # run's result.
        self.tornDown = Deferred.fromCoroutine(self._manager._teardown(self._runHex, self._bridge, self.networkID))
        self.tornDown.addErrback(lambda f: log.failure("run {run_id}: egress teardown failed", f, run_id=self._runHex))
        log.info("run {run_id} egress: {connections} connections ({forwarded} forwarded, {sinkholed} sinkholed, "
                 "{refused} refused), {dns} DNS queries, {cut}", run_id=self._runHex,
                 connections=stats.connections, forwarded=stats.forwarded, sinkholed=stats.sinkholed,
                 refused=stats.refused, dns=stats.dnsQueries, cut=stats.cut or "nothing cut")
        return stats


class EgressManager:
    """
    Makes and removes the per-run contained networks.

    @param reactor: listens for the gateways, runs threads.
    @param dockerClientFactory: the docker SDK client (made on a thread).
    @param command: C{(argv, stdin) -> awaitable (stdout, stderr, code)}.
    @param gatewayFactory: C{(**kwargs) -> RunGateway} (tests inject).
    """

    def __init__(self, reactor: Any, dockerClientFactory: Callable[[], Any] = docker.from_env,
                 defaultPolicy: str = DEFAULT_POLICY, allowedHosts: Sequence[str] = DEFAULT_ALLOWED_HOSTS,
                 limits: Limits = Limits(), command: Callable[[Sequence[str], bytes], Any] = runCommand,
                 gatewayFactory: Callable[..., RunGateway] = RunGateway, threadpool: Any = None) -> None:
        if defaultPolicy not in POLICIES:
            raise PolicyError("egress policy %r is not one of %s" % (defaultPolicy, ", ".join(POLICIES)))
        parseAllowedHosts(allowedHosts)
        self._reactor = reactor
        self._factory = dockerClientFactory
        self._client = None
        self._lock = threading.Lock()
        self.defaultPolicy = defaultPolicy
        self.allowedHosts = tuple(allowedHosts)
        self.limits = limits
        self._command = command
        self._gatewayFactory = gatewayFactory
        self._threadpool = threadpool
        self._pid = os.getpid()

    def _call(self, f: Callable[..., Any], *args: Any) -> Deferred:
        def run() -> Any:
            with self._lock:
                if self._client is None:
                    self._client = self._factory()
            return f(getattr(self._client, "api", self._client), *args)

        if self._threadpool is not None:
            return deferToThreadPool(self._reactor, self._threadpool, run)
        return deferToThread(run)

    async def open(self, job: Job, cgroupID: int, sink: Callable[[int, Dict[str, Any]], None]) -> RunEgress:
        """
        Contain C{job}'s sandbox per its policy.  Raises L{EgressError} or
        L{PolicyError} (the run must then fail, never run uncontained).
        """
        runHex = job.run_id.hex()
        policy = resolvePolicy(job, self.defaultPolicy, self.allowedHosts)
        spec = job.sandbox
        if spec is None or spec.network_mode == "none":
            return RunEgress(self, job, policy)
        if policy.mode == OPEN:
            log.warn("run {run_id}: egress policy OPEN: the install can reach the Internet, the cloud metadata "
                     "address, the host's services and its neighbours, and nothing it sends is recorded",
                     run_id=runHex)
            return RunEgress(self, job, policy)
        bridge = bridgeName(runHex)
        labels = {LABEL_ROLE: ROLE, LABEL_RUN: runHex, LABEL_PID: str(self._pid)}
        try:
            net = await self._call(_thd_createNetwork, networkName(runHex), bridge, labels)
        except EgressError:
            raise
        except Exception as e:
            raise EgressError("docker: " + " ".join(str(e).split())[:300]) from None
        gateway = None
        try:
            gateway = self._gatewayFactory(
                reactor=self._reactor, runID=job.run_id, cgroupID=cgroupID, address=net["gateway"],
                policy=GatewayPolicy(policy.mode, parseAllowedHosts(policy.allowedHosts)), sink=sink,
                limits=self.limits)
            gateway.start()
            ports = Ports(gateway.tcpPort, gateway.dnsUDPPort, gateway.dnsTCPPort, gateway.udpPort)
            for binary, script in restoreScripts(setupRules(runHex, bridge, net["gateway"], ports)):
                out, err, code = await self._command([binary, "-w", "--noflush"], script)
                if code != 0:
                    raise EgressError("%s failed: %s" % (binary, " ".join(err.decode("utf-8", "replace").split())[:200]))
        except BaseException as e:
            if gateway is not None:
                await gateway.close()
            await self._teardown(runHex, bridge, net["id"])
            if isinstance(e, (EgressError, PolicyError)):
                raise
            if isinstance(e, Exception):
                raise EgressError("gateway: %s" % (" ".join(str(e).split())[:300],)) from None
            raise
        log.info("run {run_id}: egress {mode} on {network} ({subnet}), gateway {gateway}, allowed {hosts}",
                 run_id=runHex, mode=policy.mode, network=networkName(runHex), subnet=net["subnet"],
                 gateway=net["gateway"], hosts=",".join(policy.allowedHosts))
        contained = attrs.evolve(job, sandbox=attrs.evolve(spec, network_mode=networkName(runHex)))
        return RunEgress(self, contained, policy, gateway, net["id"], runHex, bridge)

    async def _teardown(self, runHex: str, bridge: str, networkID: str) -> None:
        rules = teardownRules(runHex, bridge)
        for binary, script in restoreScripts(rules):
            try:
                out, err, code = await self._command([binary, "-w", "--noflush"], script)
            except Exception:
                log.failure("run {run_id}: {command} failed", run_id=runHex, command=binary)
                code = 1
            if code == 0:
                continue
            # Some rule was already gone (a failed setup, a reaped run): one
            # command at a time, each allowed to fail.
            for argv in rules:
                if argv[0] + "-restore" != binary:
                    continue
                try:
                    await self._command([argv[0], "-w"] + list(argv[1:]), b"")
                except Exception:
                    log.failure("run {run_id}: {command} failed", run_id=runHex, command=" ".join(argv))
        if networkID:
            try:
                await self._call(_thd_removeNetwork, networkID)
            except Exception:
                log.failure("run {run_id}: removing network {network} failed", run_id=runHex, network=networkID[:12])

    async def reapStale(self) -> int:
        """
        Remove networks (and their rules) of runner processes that are gone.
        """
        stale = await self._call(_thd_staleNetworks, self._pid, _alive)
        for netID, runHex in stale:
            await self._teardown(runHex, bridgeName(runHex), netID)
            log.info("reaped stale egress network {network} of run {run_id}", network=netID[:12], run_id=runHex)
        return len(stale)
