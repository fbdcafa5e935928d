"""
End to end, with every real part (C{twistd} orchestrator and runner, the
eBPF sensor, Docker, npm): the differ's actors and its quiet on benign
releases.

- Local C{actor-release} tarballs: a benign postinstall (1.0.0) seeds the
  baseline, a second benign release that adds files (1.1.0-next) is
  C{clean}, and a release whose postinstall reads C{~/.npmrc} and connects
  to 127.0.0.1 inside its own container (1.2.0-next) is C{deviations} with
  a critical finding that names the script; npm's own read of the same file
  is no deviation.
- Consecutive real releases of packages with install scripts from the npm
  registry: the first is the baseline, the next is C{clean}.

Under C{CI=true} a missing prerequisite fails these tests.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from fangs import npm, wire
from tests.integration.test_e2e_scan import Scanner, ensureFixtures, fixtureJob, requireAll

#: (package, earlier release, later release): real packages with install
#: scripts that run node only and download nothing beyond the registry.
REAL_RELEASES: List[Tuple[str, str, str]] = [
    ("core-js", "3.50.0", "3.51.0"),
    ("core-js-pure", "3.50.0", "3.51.0"),
    ("es5-ext", "0.10.63", "0.10.64"),
    ("protobufjs", "7.6.5", "7.6.6"),
    ("yarn", "1.22.21", "1.22.22"),
    ("msw", "2.12.0", "2.12.1"),
]


def releaseJob(name: str, version: str) -> Dict[str, Any]:
    return {
        "kind": "sandbox_scan",
        "package_name": name,
        "version": version,
        "duration": 240 * wire.SECOND,
        "sandbox": {"command": npm.installCommand(name, version), "user": "0:0", "pull_policy": "never",
                    "grace_period": wire.SECOND},
    }


class ActorFixtureTests(TestCase):
    timeout = 600

    def setUp(self) -> None:
        requireAll()

    def test_benignBenignTokenStealer(self):
        return Deferred.fromCoroutine(self._scenario())

    async def _scenario(self) -> None:
        await ensureFixtures()
        s = Scanner(self)
        await s.start()

        def job(tarball: str, version: str) -> Dict[str, Any]:
            j = fixtureJob(tarball, "actor-release")
            j["version"] = version
            return j

        first = await s.waitVerdict(await s.submit(job("actor-release", "1.0.0")))
        self.assertEqual(first["verdict"], "baseline", first)
        second = await s.waitVerdict(await s.submit(job("actor-release-1.1.0-next", "1.1.0-next")))
        self.assertEqual((second["verdict"], second["deviations"]), ("clean", []), second)
        for note in second["notes"]:
            self.assertEqual(note["severity"], "low", note)
        bad = await s.waitVerdict(await s.submit(job("actor-release-1.2.0-next", "1.2.0-next")))
        self.assertEqual(bad["verdict"], "deviations", bad)
        self.assertEqual(bad["max_severity"], "critical", bad)
        found = {(d["category"], d["value"], d["actor_detail"].get("class")): d for d in bad["deviations"]}
        npmrc = found.get(("fs_new_path_read", "/root/.npmrc", "script"))
        self.assertIsNotNone(npmrc, sorted(found))
        self.assertEqual(npmrc["severity"], "critical", npmrc)
        # The finding names the script: package, version, the shell npm ran and its pid.
        self.assertTrue(npmrc["actor"].startswith("script:actor-release@1.2.0-next:"), npmrc)
        detail = npmrc["actor_detail"]
        self.assertEqual(detail["package"], "actor-release")
        self.assertIn("node collect.js", " ".join(detail["argv"]))
        self.assertGreater(detail["pid"], 0)
        self.assertIn("script:actor-release@1.2.0-next", npmrc["reason"])
        outbound = found.get(("net_new_destination", "127.0.0.1:41414", "script"))
        self.assertIsNotNone(outbound, sorted(found))
        self.assertEqual(outbound["severity"], "critical")
        # npm reads the same file in every run: never a deviation of npm's.
        self.assertNotIn(("fs_new_path_read", "/root/.npmrc", "npm"), found)


class RealReleasesTests(TestCase):
    timeout = 1500

    def setUp(self) -> None:
        requireAll()

    def test_consecutiveReleasesAreClean(self):
        return Deferred.fromCoroutine(self._releases())

    async def _releases(self) -> None:
        s = Scanner(self)
        await s.start()
        report = []
        for name, earlier, later in REAL_RELEASES:
            first = await s.waitVerdict(await s.submit(releaseJob(name, earlier)), timeout=400)
            self.assertEqual((first["result_status"], first["verdict"]), ("ok", "baseline"),
                             (name, earlier, first.get("failure_reason"), first.get("deviations")))
            second = await s.waitVerdict(await s.submit(releaseJob(name, later)), timeout=400)
            self.assertEqual(second["result_status"], "ok", (name, later, second.get("failure_reason")))
            self.assertEqual((second["verdict"], second["deviation_count"]), ("clean", 0),
                             (name, later, [(d["severity"], d["category"], d["value"], d["actor"]) for d in second["deviations"]]))
            report.append("%s %s -> %s: %d + %d events, clean with %d low notes"
                          % (name, earlier, later, first["events_received"], second["events_received"], len(second["notes"])))
        print("\nconsecutive real releases:\n  " + "\n  ".join(report))
