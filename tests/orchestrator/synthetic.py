"""
Synthetic runs shaped like an npm install, for the differ's tests and its
benchmark (C{benchmarks/differ.py}): deterministic for a seed.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Tuple

Event = Tuple[int, int, Dict[str, Any]]

_PACKAGES = ["lodash", "react", "chalk", "debug", "ms", "semver", "uuid", "commander", "axios",
             "express", "tslib", "glob", "minimatch", "yargs", "rimraf", "esbuild", "node-gyp"]
_FILES = ["package.json", "index.js", "README.md", "LICENSE", "lib/index.js", "lib/util.js",
          "dist/index.cjs", "dist/index.mjs", "types/index.d.ts", "bin/cli.js"]
_LIBS = ["libc.so.6", "libstdc++.so.6", "libm.so.6", "libgcc_s.so.1", "libpthread.so.0",
         "libdl.so.2", "libz.so.1", "libssl.so.3", "libcrypto.so.3"]


def _header(rng: random.Random, type: int, pid: int, tags: int = 0) -> Dict[str, Any]:
    return {
        "TsNs": rng.getrandbits(40),
        "CgroupID": 4242,
        "RunID": [7] * 16,
        "PID": pid,
        "TID": pid,
        "PPID": 1,
        "UID": 0,
        "GID": 0,
        "Comm": [110, 111, 100, 101] + [0] * 12,
        "Type": type,
        "Tags": tags,
    }


def _file(rng: random.Random, path: str, flags: int, pid: int, tags: int = 0) -> Dict[str, Any]:
    return {
        "Header": _header(rng, 1, pid, tags),
        "DFD": -100,
        "Flags": flags,
        "PathLen": len(path),
        "Truncated": 0,
        "PathName": path,
        "CommStr": "node",
    }


def _hex(rng: random.Random, n: int) -> str:
    return "%0*x" % (n, rng.getrandbits(4 * n))


def syntheticEvents(count: int, seed: int = 1) -> List[Event]:
    """
    A run of C{count} events shaped like an npm install: mostly file opens
    (npm cache content and index, node_modules extraction, shared libraries),
    some execs, some network.
    """
    rng = random.Random(seed)
    events: List[Event] = []
    npmPid = 100
    for i in range(1, count + 1):
        roll = rng.random()
        pid = npmPid if roll < 0.9 else rng.choice([101, 102, 103, 104])
        if roll < 0.30:
            path = "/root/.npm/_cacache/content-v2/sha512/%s/%s/%s" % (_hex(rng, 2), _hex(rng, 2), _hex(rng, 124))
            payload = _file(rng, path, rng.choice([0o2000000, 0o2000101]), pid)
            type = 1
        elif roll < 0.42:
            path = "/root/.npm/_cacache/index-v5/%s/%s/%s" % (_hex(rng, 2), _hex(rng, 2), _hex(rng, 60))
            payload = _file(rng, path, rng.choice([0o2000000, 0o2002101]), pid)
            type = 1
        elif roll < 0.45:
            path = "/root/.npm/_cacache/tmp/%s" % (_hex(rng, 8),)
            payload = _file(rng, path, 0o2000101, pid)
            type = 1
        elif roll < 0.65:
            path = "/usr/lib/x86_64-linux-gnu/%s" % (rng.choice(_LIBS),)
            payload = _file(rng, path, 0o2000000, pid)
            type = 1
        elif roll < 0.85:
            path = "/app/node_modules/%s/%s" % (rng.choice(_PACKAGES), rng.choice(_FILES))
            payload = _file(rng, path, rng.choice([0o2000000, 0o2001101]), pid)
            type = 1
        elif roll < 0.89:
            choice = rng.random()
            if choice < 0.4:
                path = "/proc/%d/status" % (rng.randint(100, 5000),)
            elif choice < 0.6:
                path = "/tmp/npm-%d-%s/package/package.json" % (rng.randint(100, 99999), _hex(rng, 6))
            elif choice < 0.8:
                path = "/usr/local/lib/node_modules/npm/lib/%s" % (rng.choice(_FILES),)
            else:
                path = rng.choice(["/etc/hosts", "/etc/resolv.conf", "/etc/ssl/certs/ca-certificates.crt",
                                   "/root/.npm/_logs/2026-05-22T17_02_24_%03dZ-debug-0.log" % (rng.randint(0, 999),)])
            payload = _file(rng, path, 0o2000000, pid)
            type = 1
        elif roll < 0.895:
            payload = _file(rng, "/root/.npmrc", 0o2000000, npmPid, tags=3)
            type = 1
        elif roll < 0.93:
            binary = rng.choice(["/usr/local/bin/node", "/bin/sh", "/usr/bin/git", "/usr/bin/make",
                                 "/usr/bin/cc", "/tmp/npm-%d-x/build.sh" % (rng.randint(100, 9999),)])
            payload = {
                "Header": _header(rng, 2, pid),
                "Argc": 2,
                "BinaryPathStr": binary,
                "ArgvStrs": [binary, "-c"],
                "CommStr": "sh",
                "AncestorComms": ["node", "npm"],
            }
            type = 2
        elif roll < 0.96:
            # A handful of rotating CDN addresses, the Docker resolver, and
            # (rarely) a raw-IP destination from a child process.
            ip = rng.choice(["104.16.%d.34" % (rng.randint(0, 7),),
                             "2606:4700::6810:%x" % (rng.randint(1, 8),), "127.0.0.11"])
            port = 53 if ip == "127.0.0.11" else 443
            payload = {"Header": _header(rng, 3, npmPid), "Family": 10 if ":" in ip else 2, "Source": 1,
                       "DestPort": port, "Sockfd": 20, "DestIP": ip, "CommStr": "node"}
            type = 3
        elif roll < 0.98:
            payload = {"Header": _header(rng, 4, npmPid), "Family": 2, "DestPort": 53,
                       "QName": rng.choice(["registry.npmjs.org", "Registry.npmjs.org.", "github.com",
                                            "codeload.github.com"]),
                       "QType": 1, "DestIP": "127.0.0.11", "CommStr": "node", "ParseErr": None}
            type = 4
        else:
            payload = {"Header": _header(rng, 5, npmPid), "Source": 3,
                       "SNI": rng.choice(["registry.npmjs.org", "github.com", "codeload.github.com"]),
                       "DuplicateOf": "", "SourceName": "tcp_clienthello", "CommStr": "node",
                       "ParseErr": None}
            type = 5
        events.append((i, type, payload))
    # Something for the diff to find: a postinstall reading a key and
    # calling out to a raw IP.
    if seed == 1 and count >= 10:
        events[-3] = (count - 2, 1, _file(rng, "/root/.ssh/id_rsa", 0o2000000, 104, tags=3))
        events[-2] = (count - 1, 2, {"Header": _header(rng, 2, 104), "BinaryPathStr": "/usr/bin/curl",
                                      "ArgvStrs": ["curl"], "CommStr": "sh"})
        events[-1] = (count, 3, {"Header": _header(rng, 3, 104), "Family": 2, "Source": 1,
                                 "DestPort": 4444, "Sockfd": 3, "DestIP": "203.0.113.7", "CommStr": "curl"})
    return events
