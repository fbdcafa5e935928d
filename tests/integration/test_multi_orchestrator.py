"""
Two C{twistd fangs-orchestrator} processes on one PostgreSQL database, with
runners (simulated over HTTP: register, long-poll, post the result) attached
to each.  Scans submitted alternately to both are each executed exactly once,
also when one orchestrator is killed with SIGKILL half-way and its runners
move to the other.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Dict, List

from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from fangs import wire
from tests import pg
from tests.procs import OrchestratorProcess, httpClient, sleep

SCANS = 200
RUNNERS_PER_ORCHESTRATOR = 3


class SimulatedRunner:
    """
    A runner's control loop over HTTP: poll, "execute" (post an ok result),
    and on a dead orchestrator move to the next one and register again.
    """

    def __init__(self, client: Any, runnerID: str, urls: List[str], executed: Counter, owner: Dict[str, str]) -> None:
        self.client = client
        self.runnerID = runnerID
        self.urls = urls
        self.executed = executed
        self.owner = owner
        self.stopped = False
        self.moves = 0

    async def register(self) -> None:
        r = await self.client.post(self.urls[0] + "/v1/runners/register", json={"runner_id": self.runnerID, "proto_version": 1})
        body = await r.content()
        assert r.code == 200, (r.code, body)

    async def run(self) -> None:
        while not self.stopped:
            try:
                r = await self.client.get(self.urls[0] + "/v1/runners/%s/jobs" % (self.runnerID,))
                body = await r.content()
            except Exception:
                # The orchestrator died: the load balancer sends us elsewhere.
                self.urls = self.urls[1:] + self.urls[:1]
                self.moves += 1
                await sleep(0.1)
                try:
                    await self.register()
                except Exception:
                    pass
                continue
            if r.code == 204:
                continue
            if r.code == 404:
                await self.register()
                continue
            assert r.code == 200, (r.code, body)
            job = wire.loads(body, wire.Job)
            runID = job.run_id.hex()
            self.executed[runID] += 1
            self.owner[runID] = self.runnerID
            while True:
                try:
                    r = await self.client.post(self.urls[0] + "/v1/runs/%s/result" % (runID,), json={"status": "ok"})
                    await r.content()
                    assert r.code == 200, r.code
                    break
                except Exception:
                    self.urls = self.urls[1:] + self.urls[:1]
                    await sleep(0.1)


class MultiOrchestratorTests(TestCase):
    timeout = 180

    def setUp(self) -> None:
        self.dsn = pg.freshDatabase(self, "multi")

    async def _scenario(self) -> None:
        client = httpClient(self)
        args = ["--poll-wait", "3", "--watch-interval", "0"]
        a = OrchestratorProcess(self, db=self.dsn, extra=args)
        b = OrchestratorProcess(self, db=self.dsn, extra=args)
        await a.startAndWait(client)
        await b.startAndWait(client)
        executed: Counter = Counter()
        owner: Dict[str, str] = {}
        runners = []
        for i, o in enumerate([a, b] * RUNNERS_PER_ORCHESTRATOR):
            other = b if o is a else a
            runner = SimulatedRunner(client, "runner-%d" % (i,), [o.url, other.url], executed, owner)
            await runner.register()
            runners.append(runner)
        loops = [Deferred.fromCoroutine(r.run()) for r in runners]

        submitted: List[str] = []
        alive = [a, b]
        for n in range(SCANS):
            if n == SCANS // 2:
                a.kill()  # SIGKILL, mid-way: jobs queued and in flight
                alive = [b]
            o = alive[n % len(alive)]
            body: Dict[str, Any] = {"Job": {"kind": "sandbox_scan", "sandbox": {"image": "fangs-sandbox/node:20"}, "package_name": "p%d" % (n % 7), "version": "1.0.%d" % n}}
            if n % 4:
                body["target_runner"] = runners[n % len(runners)].runnerID  # often a runner of the other orchestrator
            r = await client.post(o.url + "/v1/scans", json=body)
            reply = json.loads(await r.content())
            self.assertEqual(r.code, 202, reply)
            submitted.append(reply["run_id"])

        for _ in range(600):
            if len(executed) >= SCANS:
                break
            await sleep(0.1)
        for r in runners:
            r.stopped = True
        await gatherResults(loops)

        self.assertEqual(sorted(executed), sorted(submitted), "every scan executed (%d of %d)" % (len(executed), SCANS))
        self.assertEqual([k for k, v in executed.items() if v != 1], [], "each executed exactly once")
        self.assertTrue(any(r.moves for r in runners[::2]), "the killed orchestrator's runners moved")
        # The database agrees: every run done, by the runner that got it.
        seen: Dict[str, Any] = {}
        token = None
        while True:
            url = b.url + "/v1/runs?page_size=100" + ("&page_token=" + token if token else "")
            r = await client.get(url)
            page = json.loads(await r.content())
            for run in page["runs"]:
                seen[run["run_id"]] = run
            token = page.get("next_page_token")
            if not token:
                break
        self.assertEqual(sorted(seen), sorted(submitted))
        self.assertEqual({run["state"] for run in seen.values()}, {"done"})
        self.assertEqual({k: v.get("runner_id") for k, v in seen.items()}, owner)

    def test_twoOrchestratorsShareTheQueue(self) -> Deferred:
        return Deferred.fromCoroutine(self._scenario())
