"""
Tests for L{fangs.lockfile}, on lockfiles npm itself wrote (versions 1, 2
and 3 of one project, and a workspace project with a C{file:} dependency,
all in C{tests/fixtures/lockfiles}) and on broken ones.
"""

import json
import os

from twisted.trial.unittest import SynchronousTestCase

from fangs import lockfile

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "lockfiles")


def fixture(name: str) -> str:
    return os.path.join(HERE, name)


class RealLockfileTests(SynchronousTestCase):
    def test_versionsAgree(self) -> None:
        """
        The three lockfile versions npm writes for one project name the same
        packages, transitive ones included.
        """
        found = [lockfile.read(fixture("v%d-package-lock.json" % (v,))) for v in (1, 2, 3)]
        self.assertEqual({d.kind for d in found}, {"package-lock"})
        self.assertEqual(found[0].names, found[1].names)
        self.assertEqual(found[1].names, found[2].names)
        names = found[2].names
        # Direct dependencies, and what express pulls in.
        for name in ("express", "@babel/code-frame", "is-number", "left-pad", "body-parser", "qs", "js-tokens"):
            self.assertIn(name, names)
        self.assertEqual(list(names), sorted(set(names)))
        # Every package of the lockfile, counted independently of the parser.
        doc = json.load(open(fixture("v3-package-lock.json")))
        installed = {v.get("name", k.rsplit("node_modules/", 1)[1]) for k, v in doc["packages"].items() if k}
        self.assertEqual(set(names), installed)

    def test_alias(self) -> None:
        """
        C{"string-width-cjs": "npm:string-width@^4.2.0"} is watched as
        string-width, never under its alias.
        """
        for name in ("v1-package-lock.json", "v3-package-lock.json", "package.json"):
            names = lockfile.read(fixture(name)).names
            self.assertIn("string-width", names)
            self.assertNotIn("string-width-cjs", names)

    def test_manifestDirectOnly(self) -> None:
        deps = lockfile.read(fixture("package.json"))
        self.assertEqual(deps.kind, "package.json")
        self.assertEqual(deps.names, ("@babel/code-frame", "express", "is-number", "left-pad", "string-width"))

    def test_workspaceAndFileDependency(self) -> None:
        """
        Workspace links and C{file:} packages are skipped with a reason; what
        they depend on is watched.
        """
        deps = lockfile.read(fixture("workspace-package-lock.json"))
        self.assertEqual(deps.names, ("debug", "is-number", "is-odd", "ms"))
        self.assertEqual([w for w, _ in deps.skipped], ["app", "local-lib"])
        self.assertTrue(all(r.startswith("a link to ") for _, r in deps.skipped))


class ManifestSpecTests(SynchronousTestCase):
    def test_nonRegistrySkipped(self) -> None:
        doc = {"dependencies": {"a": "git+https://example.invalid/a.git", "b": "file:../b", "c": "user/repo",
                                "d": "https://example.invalid/d.tgz", "e": "^1.0.0", "f": "workspace:*",
                                "g": "github:user/g"},
               "peerDependencies": {"@s/p": ">=2 <3"}}
        deps = lockfile.parse(json.dumps(doc), "package.json")
        self.assertEqual(deps.names, ("@s/p", "e"))
        self.assertEqual([w for w, _ in deps.skipped], ["a", "b", "c", "d", "f", "g"])

    def test_lockfileGitEntrySkipped(self) -> None:
        doc = {"lockfileVersion": 3, "packages": {
            "": {"name": "x"},
            "node_modules/g": {"version": "1.0.0", "resolved": "git+ssh://git@example.invalid/g.git#abc"},
            "node_modules/t": {"version": "1.0.0", "resolved": "https://example.invalid/t/archive.tgz"},
            "node_modules/r": {"version": "1.0.0", "resolved": "https://registry.npmjs.org/r/-/r-1.0.0.tgz"},
        }}
        deps = lockfile.parse(json.dumps(doc))
        self.assertEqual(deps.names, ("r",))
        self.assertEqual([w for w, _ in deps.skipped], ["g", "t"])


class MalformedTests(SynchronousTestCase):
    def error(self, text: str, source: str = "package-lock.json") -> str:
        e = self.assertRaises(lockfile.LockfileError, lockfile.parse, text, source)
        message = str(e)
        self.assertEqual(len(message.splitlines()), 1, message)
        self.assertTrue(message.startswith(source + ": "), message)
        return message

    def test_badJSON(self) -> None:
        self.assertIn("line 3 column", self.error('{\n "lockfileVersion": 3,\n "packages": {,}\n}'))

    def test_wrongShapes(self) -> None:
        self.assertIn('packages["node_modules/a"] must be a JSON object, not an array',
                      self.error('{"lockfileVersion": 3, "packages": {"node_modules/a": []}}'))
        self.assertIn("the top level must be a JSON object", self.error("[1, 2]"))
        self.assertIn("lockfileVersion must be 1, 2 or 3",
                      self.error('{"lockfileVersion": "x", "packages": {}}'))
        self.assertIn('dependencies.a must be a string, not a number',
                      self.error('{"dependencies": {"a": 1}}', "package.json"))
        self.assertIn("not a valid npm package name",
                      self.error('{"dependencies": {"bad name": "1.0.0"}}', "package.json"))

    def test_unreadable(self) -> None:
        e = self.assertRaises(lockfile.LockfileError, lockfile.read, fixture("missing.json"))
        self.assertIn("missing.json: cannot read it", str(e))
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b'{"dependencies": {"\xff": "1"}}')
        e = self.assertRaises(lockfile.LockfileError, lockfile.read, path)
        self.assertIn("not UTF-8", str(e))
