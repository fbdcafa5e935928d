"""
The orchestrator's domain: submitting scans, handing jobs to runners,
ingesting events, recording results, cancelling, and noticing lost runners.

The HTTP layer (L{fangs.orchestrator.api}) only structures input, calls one
method here and renders the answer.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Tuple

import attrs
import orjson
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from fangs import npm, wire
from fangs.errors import BadRequest, ConflictError, NotFoundError
from fangs.orchestrator import allowlist, auth
from fangs.orchestrator import store as S
from fangs.orchestrator.analysis import credPathsOf
from fangs.orchestrator.config import OrchestratorConfig
from fangs.orchestrator.dispatcher import Dispatcher
from fangs.orchestrator.metrics import Metrics
from fangs.orchestrator.registry import RunnerRegistry
from fangs.tenants import ALL_TENANTS, DEFAULT_TENANT

log = Logger()

DEFAULT_DURATION_NS = 10 * wire.SECOND
LOST_MARGIN_NS = 60 * wire.SECOND
#: A run its runner leaves out of a heartbeat is lost once dispatched this long ago
#: (the slack covers a heartbeat that was on its way while the job was).
LOST_UNLISTED_NS = 15 * wire.SECOND
MAX_DURATION_NS = 24 * 3600 * wire.SECOND
JOB_POLL_INTERVAL_NS = 5 * wire.SECOND
HEARTBEAT_INTERVAL_NS = 30 * wire.SECOND
JOB_KINDS = ("sensor_only", "sandbox_scan")
#: Runner capability: results carry each run's own events_dropped (else the
#: runner's cumulative counter, whose increase is counted).
PER_RUN_DROPS = "events_dropped.per_run"
INGEST_PIPELINE = 8


class Analyzer:
    """
    What the orchestrator tells about finished runs; the differ implements
    it.  The default does nothing.
    """

    def runFinished(self, runID: str) -> None:
        pass


@attrs.frozen
class IngestProgress:
    received_batches: int = 0
    received_events: int = 0
    persisted: int = 0


class Orchestrator:
    def __init__(
        self,
        clock: IReactorTime,
        store: Any,
        registry: RunnerRegistry,
        dispatcher: Dispatcher,
        config: OrchestratorConfig,
        orchestratorID: str = "fangs-orchestrator",
        version: str = "dev",
        analyzer: Optional[Analyzer] = None,
        metrics: Optional[Metrics] = None,
        runEvents: Any = None,
    ) -> None:
        self.clock = clock
        self.store = store
        self.registry = registry
        self.dispatcher = dispatcher
        self.config = config
        self.orchestratorID = orchestratorID
        self.version = version
        self.analyzer = analyzer or Analyzer()
        self.metrics = metrics if metrics is not None else Metrics(version, processMetrics=False)
        self.metrics.watch(registry, dispatcher)
        #: A L{fangs.orchestrator.stream.RunStreamPublisher}, or None.
        self.runEvents = runEvents
        #: A L{fangs.orchestrator.artifacts.ArtifactFetcher}, or None (no tarballs kept).
        self.artifacts: Any = None

    def nowNs(self) -> int:
        return int(self.clock.seconds() * 1_000_000_000)

    # -- runners -----------------------------------------------------------

    def register(self, reg: wire.RunnerRegistration) -> wire.RegistrationAck:
        if not reg.runner_id:
            raise BadRequest("missing runner_id")
        _checkRunnerID(reg.runner_id)
        if reg.proto_version != wire.PROTO_VERSION:
            raise BadRequest(
                "proto_version %d != orchestrator %d" % (reg.proto_version, wire.PROTO_VERSION),
                code="proto_version_mismatch",
            )
        self.registry.register(reg)
        # Jobs may have waited for this runner (or any runner) while it was away.
        self.dispatcher.wake(reg.runner_id)
        return wire.RegistrationAck(
            ok=True,
            orchestrator_id=self.orchestratorID,
            job_poll_interval=JOB_POLL_INTERVAL_NS,
            heartbeat_interval=HEARTBEAT_INTERVAL_NS,
        )

    async def heartbeat(self, runnerID: str, beat: wire.Heartbeat) -> wire.HeartbeatAck:
        if not await self.registry.exists(runnerID) or not self.registry.heartbeat(runnerID, beat):
            return wire.HeartbeatAck(ok=False, unknown_runner=True)
        # A run dispatched a while ago that the runner no longer lists was
        # lost with an earlier runner process: fail it now, not at its deadline.
        active = [r.lower() for r in (list(beat.active_run_ids) or ([beat.active_run_id] if beat.active_run_id else []))]
        now = self.nowNs()
        for runID in await self.store.failRunsMissingFromHeartbeat(runnerID, active, now - LOST_UNLISTED_NS, now):
            log.warn("run {run_id} failed: runner lost (runner {runner_id} no longer lists it)", run_id=runID, runner_id=runnerID)
            self.analyzer.runFinished(runID)
        cancel = await self.store.runsToCancel(runnerID)
        return wire.HeartbeatAck(ok=True, cancel_runs=cancel)

    async def pollJob(self, runnerID: str) -> Optional[S.RunRow]:
        """
        Wait for a job.  Raises L{NotFoundError} for an unregistered runner.
        The returned lease must be confirmed or released by the caller.
        """
        if not await self.registry.exists(runnerID):
            raise NotFoundError(
                "runner not registered; POST /v1/runners/register first", code="unknown_runner"
            )
        self.registry.touch(runnerID)
        return await self.dispatcher.poll(runnerID)

    async def confirmDispatch(self, runID: str, jobJSON: str) -> None:
        job = json.loads(jobJSON)
        duration = job.get("duration") or DEFAULT_DURATION_NS
        grace = (job.get("sandbox") or {}).get("grace_period") or 0
        now = self.nowNs()
        await self.store.confirmDispatch(runID, now, now + duration + grace + LOST_MARGIN_NS)
        log.info("run {run_id} dispatched", run_id=runID)
        if self.runEvents is not None:
            self.runEvents.announce("run.started", runID, job.get("package_name") or "", job.get("version") or "",
                                    "dispatched")

    # -- scans --------------------------------------------------------------

    async def submitScan(
        self,
        req: wire.ScanRequest,
        idempotencyKey: Optional[str] = None,
        requireTarget: bool = True,
        idempotencyDigest: str = "",
        tenant: str = DEFAULT_TENANT,
    ) -> Tuple[str, bool]:
        """
        Queue a scan: apply defaults, create the run, wake a waiting runner.

        A release several tenants watch is scanned once: the watcher's
        idempotency key names the release's scan whichever tenant queues it,
        and a second tenant's submission links the existing run to that
        tenant (its analysis, against that tenant's baseline, follows).

        @return: C{(run_id_hex, created)}.
        """
        target = req.target_runner or None
        if target is None and requireTarget:
            raise BadRequest("missing target_runner")
        if target is not None:
            _checkRunnerID(target)
            if not await self.registry.exists(target):
                raise NotFoundError("target_runner %r not registered" % (target,), code="unknown_runner")
        callerRunID = not req.job.run_id.is_zero()
        job = self._withDefaults(req.job)
        package = job.package_name or (job.sandbox.image if job.sandbox else "")
        if idempotencyKey is None and not callerRunID and job.kind == "sandbox_scan" and job.package_name and job.version:
            shared = await self._sameScan(job, target, tenant)
            if shared is not None:
                await self._linked(shared, tenant)
                return shared, False
        run = S.NewRun(
            id=job.run_id.hex(),
            package_name=package,
            version=job.version,
            kind=job.kind,
            target_runner=target,
            job=wire.dumps(job).decode("utf-8"),
            created_ns=self.nowNs(),
            idempotency_key=idempotencyKey,
            idempotency_digest=idempotencyDigest,
            tenant=tenant,
        )
        try:
            runID, created = await self.store.createRun(run)
        except S.IdempotencyMismatch as e:
            raise ConflictError(str(e), code="idempotency_key_reused") from None
        except S.Conflict:
            raise ConflictError("run_id %s exists already" % (run.id,)) from None
        if created:
            log.info(
                "scan {run_id} queued: {package}@{version} for {target}",
                run_id=runID,
                package=package,
                version=job.version,
                target=target or "any runner",
            )
            self.dispatcher.wake(target)
            self.metrics.scansSubmitted.inc()
            if self.runEvents is not None:
                self.runEvents.announce("run.queued", runID, package, job.version, "pending",
                                        target_runner=target or "")
            if self.artifacts is not None and job.kind == "sandbox_scan" and job.package_name and job.version:
                self.artifacts.fetchForRun(runID, job.package_name, job.version)
        else:
            await self._linked(runID, tenant)
        return runID, created

    async def _sameScan(self, job: wire.Job, target: Optional[str], tenant: str) -> Optional[str]:
        """
        Another tenant's run that is exactly the scan C{job} asks for (the
        same release, sandbox, duration, watched paths and target), queued,
        running or finished well: one install serves every tenant.
        """
        wanted = _scanShape(orjson.loads(wire.dumps(job)), target)
        for runID, jobJSON in await self.store.sharedScanCandidates(job.package_name, job.version, job.kind, tenant):
            try:
                other = orjson.loads(jobJSON)
            except orjson.JSONDecodeError:
                continue
            run = await self.store.getRun(runID)
            if run is not None and _scanShape(other, run.target_runner) == wanted:
                return runID
        return None

    async def _linked(self, runID: str, tenant: str) -> None:
        """
        An existing run was asked for again, perhaps by another tenant: link
        it to C{tenant} (its evidence is shared), announce it on that
        tenant's stream and, when it has finished, judge it for the tenant.
        """
        if not await self.store.linkRunTenant(runID, tenant, self.nowNs()):
            return
        run = await self.store.getRun(runID)
        if run is None:
            return
        log.info("run {run_id} ({package}@{version}) shared with tenant {tenant}", run_id=runID,
                 package=run.package_name, version=run.version, tenant=tenant)
        if self.runEvents is not None:
            self.runEvents.announce("run.queued", runID, run.package_name, run.version, run.state, tenant=tenant)
        if run.verdict is not None or run.result_status is not None:
            analyze = getattr(self.analyzer, "analyze", None)
            if analyze is not None:
                d = Deferred.fromCoroutine(analyze(runID, tenant=tenant))
                d.addErrback(lambda f: log.failure("analysis of shared run {run_id} for tenant {tenant} failed", f,
                                                   run_id=runID, tenant=tenant))

    def _withDefaults(self, job: wire.Job) -> wire.Job:
        kind = job.kind or "sensor_only"
        if kind not in JOB_KINDS:
            raise BadRequest("job.kind must be one of %s" % (", ".join(JOB_KINDS),))
        if kind == "sandbox_scan" and job.sandbox is None:
            raise BadRequest("job.sandbox is required for a sandbox_scan")
        if kind == "sensor_only" and job.sandbox is None and not job.cgroup_path:
            raise BadRequest("a sensor_only job needs job.cgroup_path")
        duration = job.duration or DEFAULT_DURATION_NS
        if not 0 < duration <= MAX_DURATION_NS:
            raise BadRequest("job.duration must be between 1 ns and 24 h")
        for i, wp in enumerate(job.watched_paths or ()):
            if not wp.prefix.startswith("/") or not 1 <= len(wp.prefix.encode()) <= 256:
                raise BadRequest("job.watched_paths[%d].prefix must be absolute and at most 256 bytes" % (i,))
        sandbox = job.sandbox
        if sandbox is not None:
            if sandbox.grace_period < 0 or sandbox.grace_period > 600 * wire.SECOND:
                raise BadRequest("job.sandbox.grace_period must be between 0 and 10 minutes")
            if sandbox.network_mode.lower() == "host":
                raise BadRequest("job.sandbox.network_mode host is not allowed")
            if not sandbox.image:
                sandbox = attrs.evolve(sandbox, image=self.config.sandboxImage)
            if not sandbox.pull_policy:
                # The runner's default would pull a missing image.
                sandbox = attrs.evolve(sandbox, pull_policy=self.config.pullPolicies[0])
            sandbox = self._withEgress(sandbox)
        checkScanPolicy(attrs.evolve(job, kind=kind, sandbox=sandbox), self.config)
        return attrs.evolve(
            job,
            kind=kind,
            duration=duration,
            watched_paths=list(job.watched_paths or self.config.watchedPaths),
            run_id=job.run_id if not job.run_id.is_zero() else wire.RunID.generate(self.nowNs()),
            dispatched_at=wire.timestampFromNs(self.nowNs()),
            sandbox=sandbox,
        )

    def _withEgress(self, sandbox: wire.SandboxSpec) -> wire.SandboxSpec:
        """
        Stamp the egress policy and allowed hosts (the scan's own, else the
        configuration's) on a sandbox spec; see docs/egress.md.
        """
        from fangs.egresspolicy import POLICIES, PolicyError, parseAllowedHosts

        policy = (sandbox.egress_policy or self.config.egressPolicy).strip().lower()
        if policy not in POLICIES:
            raise BadRequest("job.sandbox.egress_policy must be one of %s" % (", ".join(POLICIES),))
        hosts = list(sandbox.allowed_hosts or self.config.egressAllowedHosts)
        try:
            parseAllowedHosts(hosts)
        except PolicyError as e:
            raise BadRequest("job.sandbox.allowed_hosts: %s" % (e,)) from None
        if policy == "open":
            log.warn("scan with egress policy OPEN: its sandbox reaches everything and nothing it sends is recorded")
        return attrs.evolve(sandbox, egress_policy=policy, allowed_hosts=hosts)

    # -- events -------------------------------------------------------------

    async def requireRun(self, runID: str, tenant: Optional[str] = None) -> S.RunRow:
        """
        The run (with C{tenant}: as that tenant sees it, its own verdict and
        decision), or 404: a run not linked to C{tenant} does not exist for it.
        """
        run = await self.store.getRun(runID) if tenant is None else await self.store.getRun(runID, tenant=tenant)
        if run is None:
            raise NotFoundError("run %s not found" % (runID,), code="unknown_run")
        return run

    async def ingestLines(self, runID: str, lines: Iterable[bytes]) -> IngestProgress:
        """
        Store each NDJSON line (one L{wire.EventBatch}) in its own
        transaction, in order.  A malformed line stops the stream with
        L{BadRequest}; every batch before it stays stored.
        """
        run = await self.requireRun(runID)
        finished = run.result_status is not None
        span = self._deadlineSpan(run)
        credPaths = credPathsOf(run)
        batches = events = persisted = 0
        # Up to INGEST_PIPELINE batches wait for the store's thread while the
        # next lines are parsed here: the store applies them in order, each
        # in its own transaction.
        inflight: List[Any] = []

        async def settle(limit: int) -> None:
            nonlocal persisted
            while len(inflight) > limit:
                d, rows, started = inflight.pop(0)
                outcome = await d
                self.metrics.ingestLatency.observe(self.clock.seconds() - started)
                self.metrics.eventsPersisted.inc(outcome.events)
                persisted += outcome.events
                if outcome.inserted:
                    if self.runEvents is not None:
                        # The stream keeps at most a few of these a second.
                        self.runEvents.announce("run.updated", runID, run.package_name, run.version, "running",
                                                events_received=run.events_received + persisted)

        try:
            for lineno, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    seq, rows = parseBatchLine(line, runID)
                except BadRequest as e:
                    await settle(0)
                    raise BadRequest(
                        "line %d: %s (%d batches before it were stored)" % (lineno, e.message, batches)
                    ) from None
                self.metrics.eventsIn(r.type for r in rows)
                if finished:
                    # After the result only a resend of stored batches is
                    # accepted (a runner retrying a stream it had sent).
                    await settle(0)
                    if not await self.store.batchStored(runID, seq):
                        raise ConflictError(
                            "run %s has its result already; events after it are refused"
                            " (line %d, batch seq %d; %d batches before it were accepted as resends)"
                            % (runID, lineno, seq, batches),
                            code="run_finished",
                        )
                now = self.nowNs()
                inflight.append((self.store.ingestBatch(runID, seq, rows, now, now + span, credPaths), rows, self.clock.seconds()))
                batches += 1
                events += len(rows)
                await settle(INGEST_PIPELINE)
            await settle(0)
        except BaseException:
            # Let every batch already handed to the store finish (they are
            # stored), and never leave a Deferred's failure unhandled.
            for d, _, _ in inflight:
                d.addErrback(lambda f: None)
            raise
        return IngestProgress(batches, events, persisted)

    def _deadlineSpan(self, run: S.RunRow) -> int:
        job = json.loads(run.job)
        grace = (job.get("sandbox") or {}).get("grace_period") or 0
        return (job.get("duration") or DEFAULT_DURATION_NS) + grace + LOST_MARGIN_NS

    # -- results ------------------------------------------------------------

    async def recordResult(self, runID: str, result: wire.ScanResult) -> S.RunRow:
        if result.status not in wire.SCAN_STATUSES:
            raise BadRequest("status must be one of ok, failed, timeout (got %r)" % (result.status,))
        if not result.run_id.is_zero() and result.run_id.hex() != runID:
            raise BadRequest("body run_id %s does not match the URL's %s" % (result.run_id.hex(), runID))
        for name in ("events_emitted", "events_dropped", "duration", "events_unresolved"):
            if getattr(result, name) < 0:
                raise BadRequest("%s must not be negative" % (name,))
        if result.install_exit_code is not None and not -(2 ** 31) <= result.install_exit_code < 2 ** 31:
            raise BadRequest("install_exit_code %d is out of range" % (result.install_exit_code,))
        lifecycle = S.ResultLifecycle(
            install_exit_code=result.install_exit_code,
            install_finished_ns=_ns(result.install_finished_at),
            observation_ended_ns=_ns(result.observation_ended_at),
            events_unresolved=min(result.events_unresolved, 2 ** 62),
        )
        dropped = result.events_dropped
        current = await self.store.getRun(runID)
        if current is not None and current.result_status is None and current.runner_id and not self._perRunDrops(current.runner_id):
            # A runner that reports its process-wide cumulative counter (the
            # Go runner): this run's drops are the increase since its last
            # report.
            dropped = await self.store.dropIncrease(current.runner_id, result.events_dropped)
        try:
            run, changed = await self.store.recordResult(
                runID,
                result.status,
                result.reason,
                result.events_emitted,
                dropped,
                result.duration,
                self.nowNs(),
                lifecycle,
            )
        except S.NotFound:
            raise NotFoundError("run %s not found" % (runID,), code="unknown_run") from None
        if changed:
            log.info(
                "run {run_id} finished: {status} {reason} ({emitted} events emitted, {dropped} dropped,"
                " {received} received)",
                run_id=runID,
                status=result.status,
                reason=result.reason,
                emitted=result.events_emitted,
                dropped=result.events_dropped,
                received=run.events_received,
            )
            self.metrics.resultRecorded(result.status, result.duration, dropped)
            self.analyzer.runFinished(runID)
        return run

    def _perRunDrops(self, runnerID: str) -> bool:
        """
        Whether the runner announced (capability C{events_dropped.per_run})
        that its results count each run's own drops.
        """
        record = self.registry.get(runnerID)
        if record is None:
            return True  # unknown now: take the number as it came
        return PER_RUN_DROPS in (record.registration.capabilities or ())

    def artifactChecked(self, link: Any) -> None:
        """
        A run's tarball was checked.  A mismatch found after the run already
        has its verdict judges the run again (the mismatch is a finding of
        the run); before that, the run's own analysis includes it.
        """
        if link.status != "integrity_mismatch":
            return

        async def rejudge() -> None:
            run = await self.store.getRun(link.run_id)
            if run is not None and run.verdict is not None:
                self.analyzer.runFinished(link.run_id)

        Deferred.fromCoroutine(rejudge()).addErrback(
            lambda f: log.failure("re-judging run {run_id} after its integrity check failed", f, run_id=link.run_id))

    async def cancel(self, runID: str, tenant: Optional[str] = None) -> S.RunRow:
        if tenant is not None:
            await self.requireRun(runID, tenant)
            if [t for t in await self.store.runTenants(runID) if t != tenant]:
                raise ConflictError("run %s is shared with other tenants' watches of the release; it cannot be"
                                    " cancelled by one of them" % (runID,), code="run_shared")
        try:
            run = await self.store.cancelRun(runID, self.nowNs())
        except S.NotFound:
            raise NotFoundError("run %s not found" % (runID,), code="unknown_run") from None
        log.info("run {run_id} cancel requested (state {state})", run_id=runID, state=run.state)
        if self.runEvents is not None and run.state == "cancelled":
            self.runEvents.run("run.cancelled", run)
        return run

    # -- review ---------------------------------------------------------------

    async def decide(self, runID: str, decision: str, actor: str, tenant: str = DEFAULT_TENANT) -> S.AnalysisOutcome:
        """
        C{promoted}, C{rejected} or C{reanalyze} a finished run, for
        C{tenant} (its baseline, its decision).
        """
        await self.requireRun(runID, tenant)
        analyze = getattr(self.analyzer, "analyze", None)
        if analyze is None:
            raise ConflictError("this orchestrator runs without a differ")
        try:
            return await analyze(runID, decision=decision, actor=actor, tenant=tenant)
        except S.Conflict as e:
            raise ConflictError(str(e)) from None
        except S.NotFound:
            raise NotFoundError("run %s not found" % (runID,), code="unknown_run") from None

    async def addPackage(self, name: str, actor: str, tenant: str = DEFAULT_TENANT) -> bool:
        try:
            npm.checkPackageName(name)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        return await self.store.addPackage(name, actor, self.nowNs(), tenant=tenant)

    async def removePackage(self, name: str, actor: str, tenant: str = DEFAULT_TENANT) -> None:
        if not await self.store.removePackage(name, actor, self.nowNs(), tenant=tenant):
            raise NotFoundError("package %r is not watched" % (name,), code="unknown_package")

    async def addAllow(self, kind: str, value: Any, scope: str, package: str, note: str, actor: str,
                       tenant: str = DEFAULT_TENANT) -> str:
        if not isinstance(note, str) or len(note) > 500:
            raise BadRequest("note must be a string of at most 500 characters")
        if scope == "package" and package:
            try:
                npm.checkPackageName(package)
            except ValueError as e:
                raise BadRequest(str(e)) from None
        try:
            entry = allowlist.makeEntry(
                "al" + os.urandom(7).hex(), kind, value, scope=scope, package_name=package, note=note
            )
        except allowlist.AllowlistError as e:
            raise BadRequest(str(e)) from None
        try:
            return await self.store.addAllow(entry, actor, self.nowNs(), tenant=tenant)
        except S.Conflict as e:
            raise ConflictError(str(e)) from None

    async def removeAllow(self, entryID: str, actor: str, tenant: str = DEFAULT_TENANT) -> None:
        try:
            removed = await self.store.removeAllow(entryID, actor, self.nowNs(), tenant=tenant)
        except S.Conflict as e:
            raise ConflictError(str(e)) from None
        if not removed:
            raise NotFoundError("allowlist entry %s not found" % (entryID,))

    async def createToken(self, name: str, scopes: List[str], actor: str, tenant: str = ALL_TENANTS) -> Dict[str, Any]:
        """
        A new API token of C{tenant} (C{*}: all tenants, what the first
        admin token is); the secret is returned once and stored hashed.
        """
        if not 1 <= len(name) <= 128 or not all(c.isalnum() or c in "-_.:@" for c in name):
            raise BadRequest("token name must be 1-128 characters of letters, digits and - _ . : @")
        unknown = sorted(set(scopes) - set(auth.ALL_SCOPES))
        if unknown:
            raise BadRequest("unknown scope %s (choose from %s)" % (", ".join(unknown), ", ".join(auth.ALL_SCOPES)))
        if auth.SCOPE_RUNNER in scopes and len(scopes) > 1:
            raise BadRequest("a runner token has the runner scope only")
        tokenID, secret, token = auth.newToken()
        await self.store.createToken(tokenID, name, " ".join(sorted(set(scopes))), auth.hashSecret(secret), actor, self.nowNs(),
                                     tenant=tenant)
        log.info("token {token_id} ({name}, {scopes}, tenant {tenant}) created by {actor}", token_id=tokenID, name=name,
                 scopes=scopes, tenant=tenant, actor=actor)
        return {"id": tokenID, "name": name, "scopes": sorted(set(scopes)), "tenant": tenant, "token": token}

    # -- housekeeping ---------------------------------------------------------

    async def sweep(self) -> None:
        """
        Prune stale runners and fail runs whose runner went quiet.  Never
        raises (it runs from a timer).
        """
        try:
            await self.registry.refresh()
            self.registry.prune()
            lost = await self.store.sweepLost(self.nowNs())
            for runID in lost:
                log.warn("run {run_id} failed: runner lost", run_id=runID)
                self.analyzer.runFinished(runID)
        except Exception:
            log.failure("housekeeping sweep failed")


def _scanShape(job: Dict[str, Any], target: Optional[str]) -> Any:
    """
    What makes two scans the same scan: the job without its run id and
    dispatch time, and the runner it is for.
    """
    shape = {k: v for k, v in job.items() if k not in ("run_id", "dispatched_at")}
    return orjson.dumps(shape, option=orjson.OPT_SORT_KEYS), target or None


def _checkRunnerID(runnerID: str) -> None:
    if not (1 <= len(runnerID) <= 128) or not all(c.isalnum() or c in "-_.:@" for c in runnerID):
        raise BadRequest("runner id must be 1-128 characters of letters, digits and - _ . : @")


def parseBatchLine(line: bytes, runID: str) -> Tuple[int, List[S.EventRow]]:
    """
    Validate one NDJSON line as an L{wire.EventBatch} and turn it into rows.

    This is the ingest hot path, so it checks the shape by hand instead of
    going through cattrs; the rules are the wire types'.
    """
    try:
        batch = orjson.loads(line)
    except orjson.JSONDecodeError:
        # orjson refuses what stdlib JSON accepts in a few corners (integers
        # beyond 64 bits, deep nesting); let the stdlib decide and explain.
        try:
            batch = json.loads(line)
        except RecursionError:
            raise BadRequest("JSON nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest("malformed JSON: %s" % (e,)) from None
    if not isinstance(batch, dict):
        raise BadRequest("an event batch must be a JSON object")
    seq = batch.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq < 2**63:
        raise BadRequest("seq must be an integer >= 1")
    rid = batch.get("run_id")
    if rid is not None:
        try:
            batchRun = wire.structure(rid, wire.RunID)
        except wire.WireError as e:
            raise BadRequest("run_id: %s" % (e,)) from None
        if not batchRun.is_zero() and batchRun.hex() != runID:
            raise BadRequest("batch run_id %s does not match the URL's %s" % (batchRun.hex(), runID))
    items = batch.get("events")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise BadRequest("events must be an array")
    rows = []
    for idx, ev in enumerate(items):
        if not isinstance(ev, dict):
            raise BadRequest("events[%d] must be an object" % (idx,))
        etype = ev.get("type")
        if isinstance(etype, bool) or not isinstance(etype, int) or not 0 < etype < 256:
            raise BadRequest("events[%d].type must be an integer from 1 to 255" % (idx,))
        payload = ev.get("payload")
        if not isinstance(payload, dict):
            raise BadRequest("events[%d].payload must be an object" % (idx,))
        header = payload.get("Header")
        ts = pid = 0
        if isinstance(header, dict):
            ts = header.get("TsNs")
            pid = header.get("PID")
            if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts < 2**63:
                ts = 0
            if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid < 2**63:
                pid = 0
        rows.append(S.EventRow(seq, idx, etype, ts, pid, _encodePayload(payload), payload))
    return seq, rows


def _encodePayload(payload: Dict[str, Any]) -> str:
    try:
        return orjson.dumps(payload).decode("utf-8")
    except TypeError:  # an integer beyond 64 bits (stdlib JSON keeps it), or a lone surrogate
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest("payload holds text that is not valid Unicode (a lone surrogate escape)") from None
        return text


def _ns(when: Any) -> Any:
    """
    Nanoseconds since the epoch of a result's timestamp, or None.
    """
    if when is None:
        return None
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


_CGROUP_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_CGROUP_PATH = re.compile(r"^(?:/sys/fs/cgroup/unified|/sys/fs/cgroup)?/fangs(?:/%s)+$" % (_CGROUP_NAME,))
PULL_POLICIES = ("", "never", "missing", "always")


def checkScanPolicy(job: wire.Job, config: Any) -> None:
    """
    What a write-scope caller may ask a runner to do: watch a cgroup only
    of a C{sensor_only} job and only under the runner's own C{/fangs/}
    tree, run only allowed images, and ask for at most the configured
    memory, CPU and pids.

    @raise BadRequest: the job asks for more.
    """
    kind = job.kind or "sensor_only"
    if job.cgroup_path:
        if kind != "sensor_only":
            raise BadRequest("job.cgroup_path is only for sensor_only jobs")
        if not _CGROUP_PATH.match(job.cgroup_path) or "/../" in job.cgroup_path + "/" or "/./" in job.cgroup_path + "/":
            raise BadRequest("job.cgroup_path must name a cgroup under the runner's /fangs/ tree (like /fangs/<name>)")
    sandbox = job.sandbox
    if sandbox is None:
        return
    if sandbox.cgroup_parent and not _CGROUP_PATH.match(sandbox.cgroup_parent):
        raise BadRequest("job.sandbox.cgroup_parent must be under /fangs/")
    image = sandbox.image or config.sandboxImage
    if not any(fnmatch.fnmatchcase(image, pattern) for pattern in config.allowedImages()):
        raise BadRequest(
            "job.sandbox.image %r is not allowed (allowed: %s; see sandbox.images in the config)"
            % (image, ", ".join(config.allowedImages()))
        )
    if sandbox.pull_policy not in PULL_POLICIES:
        raise BadRequest("job.sandbox.pull_policy must be one of never, missing, always")
    if sandbox.pull_policy and sandbox.pull_policy not in config.pullPolicies:
        raise BadRequest(
            "job.sandbox.pull_policy %s is not allowed (allowed: %s; see sandbox.pull_policies in the config)"
            % (sandbox.pull_policy, ", ".join(config.pullPolicies))
        )
    if sandbox.network_mode and sandbox.network_mode not in config.networkModes:
        raise BadRequest(
            "job.sandbox.network_mode %r is not allowed (allowed: %s; see sandbox.network_modes in the config)"
            % (sandbox.network_mode[:100], ", ".join(config.networkModes))
        )
    for field, ceiling, what in (
        ("memory_bytes", config.maxMemoryBytes, "sandbox.max_memory_bytes"),
        ("nano_cpus", config.maxNanoCpus, "sandbox.max_nano_cpus"),
        ("pids_limit", config.maxPids, "sandbox.max_pids"),
    ):
        value = getattr(sandbox, field)
        if value < 0 or value > ceiling:
            raise BadRequest("job.sandbox.%s must be between 0 and %d (%s)" % (field, ceiling, what))
