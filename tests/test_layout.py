"""
The shape of the source tree: what the CLI may import, what the product
packages hold and what the wheel ships.
"""

from __future__ import annotations

import ast
import configparser
import json
import os
import subprocess
import sys
from typing import Iterator, Set

from twisted.trial.unittest import SynchronousTestCase

from tests.procs import REPO

FANGS = os.path.join(REPO, "fangs")

#: What the CLI must never pull in: the daemons and their HTTP stacks.
FORBIDDEN = ("fangs.orchestrator", "fangs.runner", "treq", "klein", "docker", "psycopg", "jinja2", "autobahn", "bcc")


def _cliSources() -> Iterator[str]:
    single = os.path.join(FANGS, "cli.py")
    if os.path.exists(single):
        yield single
    for dirpath, _, files in os.walk(os.path.join(FANGS, "cli")):
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(dirpath, name)


def _importedModules(path: str) -> Set[str]:
    """
    Every absolute module named by an import statement in C{path}, at any
    depth (the CLI imports some modules inside the command that needs them).
    """
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update("%s.%s" % (node.module, alias.name) for alias in node.names)
    return names


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


class CLIImportTests(SynchronousTestCase):
    def test_noOrchestratorOrRunnerModuleLoaded(self) -> None:
        """
        Importing C{fangs.cli}, and then every C{fangs} module the CLI's
        commands import on demand, in a fresh interpreter leaves no
        orchestrator or runner module (nor treq, Klein, docker, psycopg...)
        in C{sys.modules}.
        """
        onDemand = sorted(
            {n for path in _cliSources() for n in _importedModules(path) if n.startswith("fangs.")}
            - {"fangs.cli"}
        )
        script = (
            "import importlib, json, sys\n"
            "import fangs.cli\n"
            "for name in %r:\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except ImportError:\n"
            "        pass  # 'from fangs import wire' names an attribute, not a module\n"
            "print(json.dumps(sorted(sys.modules)))\n" % (onDemand,)
        )
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
            env=dict(os.environ, PYTHONPATH=REPO), timeout=60,
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        loaded = json.loads(out.stdout.strip().splitlines()[-1])
        self.assertIn("fangs.cli", loaded)
        self.assertEqual([m for m in loaded if _forbidden(m)], [])

    def test_noImportStatementNamesTheDaemons(self) -> None:
        """
        No import statement anywhere in the CLI's source names an
        orchestrator or runner module, so a command run later cannot load
        one either.
        """
        sources = list(_cliSources())
        self.assertTrue(sources)
        for path in sources:
            bad = sorted(n for n in _importedModules(path) if _forbidden(n))
            self.assertEqual(bad, [], os.path.relpath(path, REPO))


#: Calls that need a real part (L{tests.prereq}, L{tests.pg}): only tests
#: under tests/integration/ may make them.
REAL_PARTS = {("prereq", "requireRoot"), ("prereq", "requireBPF"), ("prereq", "requireDocker"),
              ("prereq", "requireSandboxImage"), ("prereq", "missing"), ("pg", "freshDatabase"), ("pg", "cluster")}


class TestLayoutTests(SynchronousTestCase):
    def test_unitModulesNeedNoRealPart(self) -> None:
        """
        No test module outside C{tests/integration/} asks for root, the
        kernel's eBPF, Docker, the sandbox image or PostgreSQL, so
        C{make unit} needs none of them.
        """
        tests = os.path.join(REPO, "tests")
        found = []
        for dirpath, dirs, files in os.walk(tests):
            if os.path.relpath(dirpath, tests).split(os.sep)[0] == "integration":
                continue
            for name in files:
                if not (name.startswith("test_") and name.endswith(".py")):
                    continue
                path = os.path.join(dirpath, name)
                with open(path) as f:
                    tree = ast.parse(f.read(), path)
                for node in ast.walk(tree):
                    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                            and (node.value.id, node.attr) in REAL_PARTS):
                        found.append("%s:%d %s.%s" % (os.path.relpath(path, REPO), node.lineno, node.value.id, node.attr))
        self.assertEqual(found, [])
        self.assertTrue(os.path.exists(os.path.join(tests, "integration", "test_e2e_scan.py")))


class PackagingTests(SynchronousTestCase):
    def test_noBenchmarkInTheProduct(self) -> None:
        """
        Benchmarks live in C{benchmarks/}, not in the product packages.
        """
        found = [
            os.path.relpath(os.path.join(d, n), REPO)
            for d, _, files in os.walk(FANGS)
            for n in files
            if n.startswith("bench") and n.endswith(".py")
        ]
        self.assertEqual(found, [])
        self.assertTrue(os.path.exists(os.path.join(REPO, "benchmarks", "__main__.py")))

    def test_benchmarksListAndResolve(self) -> None:
        """
        C{python -m benchmarks --list} (what C{make bench} runs, without
        running anything) names every benchmark, and each one's module and
        function import.
        """
        env = dict(os.environ, PYTHONPATH=REPO)
        listed = subprocess.run([sys.executable, "-m", "benchmarks", "--list"], capture_output=True, text=True,
                                cwd=REPO, env=env, timeout=60)
        self.assertEqual(listed.returncode, 0, listed.stderr)
        names = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
        self.assertIn("ingest", names)
        self.assertIn("postgres", names)
        script = (
            "import importlib, benchmarks.__main__ as M\n"
            "for name, module, function, _, _ in M._TABLE:\n"
            "    assert callable(getattr(importlib.import_module(module), function)), name\n"
            "print(' '.join(name for name, *_ in M._TABLE))\n"
        )
        resolved = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env,
                                  timeout=60)
        self.assertEqual(resolved.returncode, 0, resolved.stderr)
        self.assertEqual(resolved.stdout.split(), names)

    def test_wheelShipsEveryProductPackageAndNoBenchmarks(self) -> None:
        """
        C{setup.cfg} lists every package under C{fangs/} (a package left out
        would be missing from the wheel) and neither C{benchmarks} nor
        C{tests}.
        """
        config = configparser.ConfigParser()
        config.read(os.path.join(REPO, "setup.cfg"))
        listed = set(config["options"]["packages"].split())
        onDisk = {
            os.path.relpath(d, REPO).replace(os.sep, ".")
            for d, _, files in os.walk(FANGS)
            if "__init__.py" in files
        }
        self.assertEqual(sorted(onDisk - listed), [])
        self.assertEqual(sorted(p for p in listed if p.split(".")[0] in ("benchmarks", "tests")), [])
