"""
The local sandbox image, built without Docker Hub.

There is no registry to pull a Node image from, so the sandbox image is made
from a Debian root filesystem (C{debootstrap --variant=minbase}) plus this
machine's own C{node} binary and C{npm} tree, then C{docker import}ed::

    python -m fangs.runner.image --ensure fangs-sandbox/node:20

builds it only when the tag is missing (about a minute) and prints one
progress line per step.  C{--fixtures TAG} also builds the derived test image
that carries C{tests/fixtures/npm} at C{/fixtures}, each package also packed
to C{/fixtures/<name>.tgz}.

The image has a C{node} user (uid and gid 1000, home C{/home/node}) so the
default non-root sandbox user has a writable home for npm's cache, and
C{NODE_EXTRA_CA_CERTS} pointing at the machine's CA bundle so npm trusts the
registry through this network's TLS proxy.

This module is a command-line tool and a test helper: it blocks (subprocess)
and must never be called on a reactor thread.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable, List, Optional

SANDBOX_IMAGE = "fangs-sandbox/node:20"
#: The fixtures image of the tests; C{FANGS_FIXTURES_IMAGE} names another tag so that
#: several checkouts on one machine do not rebuild one image under each other.
FIXTURES_IMAGE = os.environ.get("FANGS_FIXTURES_IMAGE", "fangs-sandbox/fixtures:test")
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SUITE = "bookworm"
SANDBOX_UID = 1000
SANDBOX_HOME = "/home/node"

#: Dockerfile instructions applied by C{docker import --change}.
IMPORT_CHANGES = (
    "ENV NODE_EXTRA_CA_CERTS=" + CA_BUNDLE,
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "WORKDIR /",
    'CMD ["/bin/sh"]',
)

FIXTURES_DIR = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "npm"

Progress = Callable[[str], None]


class ImageError(Exception):
    """
    Building an image failed; the message is one line saying why.
    """


def _quiet(line: str) -> None:
    pass


def _tail(text: bytes | str, lines: int = 1) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    kept = [l.strip() for l in text.strip().splitlines() if l.strip()]
    return " | ".join(kept[-lines:]) or "(no output)"


def _run(argv: List[str], what: str, **kw) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(argv, capture_output=True, **kw)
    except FileNotFoundError:
        raise ImageError("%s: %s is not installed (run `make setup`)" % (what, argv[0])) from None
    if done.returncode != 0:
        raise ImageError("%s failed (exit %d): %s" % (what, done.returncode, _tail(done.stderr or done.stdout, 2)))
    return done


def requireDocker() -> None:
    """
    Raise L{ImageError} unless the docker CLI reaches a running daemon.
    """
    try:
        done = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True)
    except FileNotFoundError:
        raise ImageError("docker CLI is not installed (run `make setup`)") from None
    if done.returncode != 0:
        raise ImageError("dockerd is not answering (run `make setup`): %s" % (_tail(done.stderr),))


def imageExists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def sharedLibraries(binary: str) -> List[str]:
    """
    The resolved paths of the shared libraries C{binary} needs, from C{ldd};
    empty for a static binary.
    """
    done = subprocess.run(["ldd", binary], capture_output=True, text=True)
    libs = []
    for line in done.stdout.splitlines():
        parts = line.split()
        if "=>" in parts:
            target = parts[parts.index("=>") + 1]
            if target.startswith("/"):
                libs.append(target)
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])
    return libs


def populateRoot(root: Path, node: str = "/usr/bin/node", npmDir: str = "/usr/lib/node_modules/npm",
                 caBundle: str = CA_BUNDLE) -> None:
    """
    Add node, npm, the CA bundle and the C{node} user to a debootstrapped root.
    """
    if not os.path.exists(node):
        raise ImageError("node binary %s not found (install nodejs)" % (node,))
    if not os.path.isdir(npmDir):
        raise ImageError("npm directory %s not found (install npm)" % (npmDir,))
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(node, root / "usr/bin/node")
    # Libraries the root filesystem lacks (minbase already has libstdc++ for apt).
    for lib in sharedLibraries(node):
        dest = root / lib.lstrip("/")
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(lib, dest)
    modules = root / "usr/lib/node_modules"
    modules.mkdir(parents=True, exist_ok=True)
    if (modules / "npm").exists():
        shutil.rmtree(modules / "npm")
    shutil.copytree(npmDir, modules / "npm", symlinks=True)
    for name, script in (("npm", "npm-cli.js"), ("npx", "npx-cli.js")):
        link = root / "usr/bin" / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("../lib/node_modules/npm/bin/" + script)
    certs = root / CA_BUNDLE.lstrip("/")
    certs.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(caBundle, certs)
    # The default sandbox user: uid/gid 1000 with a home npm can write to.
    with open(root / "etc/passwd", "a") as f:
        f.write("node:x:%d:%d:node:%s:/bin/sh\n" % (SANDBOX_UID, SANDBOX_UID, SANDBOX_HOME))
    with open(root / "etc/group", "a") as f:
        f.write("node:x:%d:\n" % (SANDBOX_UID,))
    home = root / SANDBOX_HOME.lstrip("/")
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, SANDBOX_UID, SANDBOX_UID)
    os.chmod(home, 0o755)
    # Trim what a sandbox never needs.
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
        target = root / junk
        if target.is_dir():
            for child in target.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()


def importRoot(root: Path, tag: str, changes: Iterable[str] = IMPORT_CHANGES) -> None:
    """
    C{tar -C root -c . | docker import --change ... - tag}.
    """
    if not (root / "etc/passwd").is_file():
        raise ImageError("%s is not a root filesystem" % (root,))
    argv = ["docker", "import"]
    for change in changes:
        argv += ["--change", change]
    argv += ["-", tag]
    tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(root), "-c", "."],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        imported = subprocess.run(argv, stdin=tar.stdout, capture_output=True)
    finally:
        tar.stdout.close()
        tarErr = tar.stderr.read()
        tar.stderr.close()
        tar.wait()
    if tar.returncode != 0:
        if imported.returncode == 0:
            subprocess.run(["docker", "image", "rm", tag], capture_output=True)
        raise ImageError("tar of the root filesystem failed: %s" % (_tail(tarErr),))
    if imported.returncode != 0:
        raise ImageError("docker import failed: %s" % (_tail(imported.stderr),))


def buildSandboxImage(tag: str = SANDBOX_IMAGE, progress: Progress = _quiet, mirror: str = DEBIAN_MIRROR,
                      suite: str = DEBIAN_SUITE, workDir: Optional[str] = None) -> None:
    """
    Build the sandbox image and tag it C{tag}.  Raises L{ImageError}.
    """
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is not installed (run `make setup`)")
    requireDocker()
    with tempfile.TemporaryDirectory(prefix="fangs-rootfs-", dir=workDir or "/var/tmp") as tmp:
        root = Path(tmp) / "root"
        progress("debootstrap %s (minbase) from %s ..." % (suite, mirror))
        _run(["debootstrap", "--variant=minbase", "--include=ca-certificates", suite, str(root), mirror],
             "debootstrap")
        progress("adding node, npm and the CA bundle ...")
        populateRoot(root)
        progress("docker import as %s ..." % (tag,))
        importRoot(root, tag)
    progress("built %s" % (tag,))


def checkImage(tag: str) -> str:
    """
    Run C{node --version && npm --version} in the image; return the output.
    """
    done = _run(["docker", "run", "--rm", "--network", "none", tag, "sh", "-c", "node --version && npm --version"],
                "smoke test of " + tag)
    return done.stdout.decode().strip().replace("\n", " / npm ")


def ensureSandboxImage(tag: str = SANDBOX_IMAGE, progress: Progress = _quiet) -> bool:
    """
    Build the image unless it exists.  Returns whether it was built.
    """
    requireDocker()
    if imageExists(tag):
        progress("%s present" % (tag,))
        return False
    buildSandboxImage(tag, progress)
    progress("node %s in %s" % (checkImage(tag), tag))
    return True


FIXTURES_DOCKERFILE = """\
FROM {base}
COPY npm /fixtures
RUN cd /fixtures && for d in */; do npm pack --silent "./$d" >/dev/null || exit 1; done \\
    && for t in *.tgz; do mv "$t" "$(echo "$t" | sed 's/-[0-9][0-9.]*\\.tgz$/.tgz/')"; done \\
    && chmod -R a+rX /fixtures
LABEL io.fangs.role=fixtures
"""


def buildFixturesImage(tag: str = FIXTURES_IMAGE, base: str = SANDBOX_IMAGE, fixtures: Path = FIXTURES_DIR,
                       progress: Progress = _quiet) -> None:
    """
    Build C{tag} = C{base} + C{fixtures} at C{/fixtures} (each package also
    packed to C{/fixtures/<name>.tgz}) with a generated Dockerfile whose
    C{FROM} is the local image: nothing is pulled.  A label records a digest
    of the fixture tree.
    """
    if not imageExists(base):
        raise ImageError("base image %s missing (run `make setup`)" % (base,))
    with tempfile.TemporaryDirectory(prefix="fangs-fixtures-") as tmp:
        shutil.copytree(fixtures, Path(tmp) / "npm")
        dockerfile = FIXTURES_DOCKERFILE.format(base=base)
        dockerfile += "LABEL io.fangs.fixtures=%s\n" % (_fixturesKey(base, fixtures),)
        (Path(tmp) / "Dockerfile").write_text(dockerfile)
        progress("docker build %s from %s ..." % (tag, base))
        previous = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", tag], capture_output=True, text=True)
        env = dict(os.environ, DOCKER_BUILDKIT="0")
        _run(["docker", "build", "--pull=false", "--network", "none", "-q", "-t", tag, tmp],
             "docker build " + tag, env=env)
        # The image this tag named before is now dangling: drop it (unless
        # the build, all from cache, gave the very same image back).
        now = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", tag], capture_output=True, text=True)
        if previous.returncode == 0 and previous.stdout.strip() and previous.stdout.strip() != now.stdout.strip():
            subprocess.run(["docker", "image", "rm", previous.stdout.strip()], capture_output=True)


def ensureFixturesImage(tag: str = FIXTURES_IMAGE, base: str = SANDBOX_IMAGE, fixtures: Path = FIXTURES_DIR,
                        progress: Progress = _quiet) -> bool:
    """
    Build the fixtures image unless the image of that tag already holds
    these exact fixtures on the current base.  Returns whether it was built.
    """
    done = subprocess.run(["docker", "image", "inspect", "-f", '{{index .Config.Labels "io.fangs.fixtures"}}', tag],
                          capture_output=True, text=True)
    if done.returncode == 0 and done.stdout.strip() == _fixturesKey(base, fixtures):
        return False
    buildFixturesImage(tag, base, fixtures, progress)
    return True


def _fixturesKey(base: str, fixtures: Path) -> str:
    """
    A digest of the fixture tree and the base image's id.
    """
    import hashlib

    h = hashlib.sha256()
    baseID = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", base], capture_output=True, text=True)
    h.update(baseID.stdout.strip().encode() + b"\0")
    for path in sorted(p for p in fixtures.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(fixtures)).encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fangs.runner.image",
                                     description="Build the FANGS sandbox image locally (no Docker Hub).")
    parser.add_argument("--ensure", metavar="TAG", help="build TAG only when it is missing")
    parser.add_argument("--rebuild", metavar="TAG", help="build TAG even when it exists")
    parser.add_argument("--fixtures", metavar="TAG", help="also build the npm fixtures test image TAG")
    args = parser.parse_args(argv)
    if not (args.ensure or args.rebuild or args.fixtures):
        parser.error("give --ensure TAG, --rebuild TAG or --fixtures TAG")

    def progress(line: str) -> None:
        sys.stdout.write("image: %s\n" % (line,))
        sys.stdout.flush()

    try:
        base = SANDBOX_IMAGE
        if args.ensure:
            ensureSandboxImage(args.ensure, progress)
            base = args.ensure
        if args.rebuild:
            buildSandboxImage(args.rebuild, progress)
            progress("node %s in %s" % (checkImage(args.rebuild), args.rebuild))
            base = args.rebuild
        if args.fixtures:
            if not ensureFixturesImage(args.fixtures, base, progress=progress):
                progress("%s present" % (args.fixtures,))
    except ImageError as e:
        sys.stderr.write("image: error: %s\n" % (e,))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
