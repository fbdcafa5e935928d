"""
Actors and manifest deltas as a reviewer sees them: the API, the CLI's run
view, the notifier's messages and the dashboard's run page.
"""

from __future__ import annotations

import io

from twisted.trial.unittest import SynchronousTestCase

from fangs.orchestrator import notifier as N
from tests.orchestrator.helpers import InMemoryOrchestrator, runScan


def ev(kind, pid, ppid, **fields):
    return {"type": kind, "payload": dict(fields, Header={"TsNs": 1, "PID": pid, "TID": pid, "PPID": ppid, "Tags": fields.pop("tags", 0) if "tags" in fields else 0})}


def npmAndScript():
    return [
        ev(2, 100, 50, BinaryPathStr="/usr/bin/node", ArgvStrs=["node", "/usr/bin/npm", "install", "left-pad"]),
        ev(1, 100, 50, PathName="/root/.npmrc", Flags=0),
        ev(2, 200, 100, BinaryPathStr="/tmp/t/node_modules/left-pad/node_modules/.bin/sh", ArgvStrs=["sh", "-c", "node x.js"]),
        ev(2, 200, 100, BinaryPathStr="/usr/bin/sh", ArgvStrs=["sh", "-c", "node x.js"]),
        ev(2, 201, 200, BinaryPathStr="/usr/bin/node", ArgvStrs=["node", "x.js"]),
    ]


class DisplayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.o = InMemoryOrchestrator(self)
        self.o.register()
        self.base = runScan(self.o, npmAndScript())
        bad = npmAndScript() + [
            {"type": 1, "payload": {"Header": {"TsNs": 2, "PID": 201, "PPID": 200, "Tags": 3}, "PathName": "/root/.npmrc", "Flags": 0}},
            {"type": 3, "payload": {"Header": {"TsNs": 3, "PID": 201, "PPID": 200}, "DestIP": "127.0.0.1", "DestPort": 41414}},
        ]
        self.bad = runScan(self.o, bad, version="1.3.1")

    def test_api(self) -> None:
        code, run = self.o.call("GET", "/v1/runs/" + self.bad)
        self.assertEqual((code, run["verdict"], run["max_severity"]), (200, "deviations", "critical"))
        found = {(d["category"], d["value"]): d for d in run["deviations"]}
        npmrc = found[("fs_new_path_read", "/root/.npmrc")]
        self.assertEqual(npmrc["actor"], "script:left-pad@1.3.1:?")
        self.assertEqual((npmrc["actor_detail"]["pid"], npmrc["actor_detail"]["argv"]), (200, ["sh", "-c", "node x.js"]))
        self.assertEqual(npmrc["actor_detail"]["package"], "left-pad")
        code, one = self.o.call("GET", "/v1/deviations/" + npmrc["id"])
        self.assertEqual(one["actor"], "script:left-pad@1.3.1:?")
        code, base = self.o.call("GET", "/v1/packages/left-pad/baseline")
        self.assertIn(("fs_new_path_read", "/root/.npmrc", "npm"),
                      {(f["category"], f["value"], f["actor"]) for f in base["fingerprints"]})

    def test_cli(self) -> None:
        from fangs.cli.context import Context
        from fangs.cli.runs import showRun

        code, run = self.o.call("GET", "/v1/runs/" + self.bad)
        import argparse

        out = io.StringIO()
        c = Context(argparse.Namespace(json=False), None)
        c.out = out
        showRun(c, run)
        text = out.getvalue()
        self.assertIn("ACTOR", text)
        self.assertIn("script:left-pad@1.3.1:? pid 200", text)

    def test_notifierNamesTheActor(self) -> None:
        code, run = self.o.call("GET", "/v1/runs/" + self.bad)
        info = dict(run, run_id=run["run_id"])
        for template in ("slack", "discord", "generic", "siem"):
            body, _ = N.render(template, info, run["deviations"])
            # Chat templates break mentions in package-controlled text (the
            # actor names a package) with invisible characters.
            text = body.decode("unicode_escape" if template == "generic" else "utf-8").replace("\u200b", "").replace("\u2060", "")
            self.assertIn("script:left-pad", text, template)
            self.assertIn("1.3.1:?", text, template)

    def test_dashboardRunPage(self) -> None:
        r = self.o.treq.get("http://orchestrator.test/ui/runs/" + self.bad)
        self.o.treq.flush()
        response = self.successResultOf(r)
        d = response.content()
        self.o.treq.flush()
        text = self.successResultOf(d).decode()
        self.assertEqual(response.code, 200, text[:300])
        self.assertIn("<th>Actor</th>", text)
        self.assertIn("script:left-pad@1.3.1:?", text)
        self.assertIn("sh -c node x.js", text)
