"""
The npm registry pre-flight of C{scan submit} and C{package add}: the
package (and version) must be published before a scan is queued.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from typing import Any, Optional, Tuple

from fangs.cli.context import Context
from fangs.cli.http import EXIT_NOT_FOUND, CLIError, netProblem


DEFAULT_REGISTRY = "https://registry.npmjs.org"


def registryResolve(base: str, name: str, version: str, context: Optional[ssl.SSLContext] = None, timeout: float = 15.0) -> Tuple[str, Any]:
    """
    Check C{name} (and C{version}, or latest when "") on the registry.

    @return: C{(version, release)}.
    """
    from fangs.npmregistry import ACCEPT_ABBREVIATED, RegistryError, packumentURL, parsePackument

    url = packumentURL(base, name)
    req = urllib.request.Request(url, headers={"Accept": ACCEPT_ABBREVIATED, "User-Agent": "fangs-cli"})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            doc = json.loads(r.read())
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise CLIError(
                "package %s is not on the registry %s (check the spelling, or --skip-registry-validate for a private package)"
                % (name, base),
                EXIT_NOT_FOUND,
            ) from None
        raise CLIError("registry %s answered %d for %s; retry later or use --skip-registry-validate" % (base, e.code, name)) from None
    except (urllib.error.URLError, OSError, ssl.SSLError) as e:
        raise netProblem(base, e, "the npm registry") from None
    except ValueError:
        raise CLIError("registry %s sent malformed JSON for %s" % (base, name)) from None
    try:
        p = parsePackument(doc, name)
    except RegistryError as e:
        raise CLIError(str(e)) from None
    if not version:
        if not p.latest:
            raise CLIError("package %s has no latest dist-tag on %s; give --version" % (name, base))
        version = p.latest
    release = p.release(version)
    if release is None:
        recent = sorted((r.version for r in p.releases), key=_versionKey)[-5:]
        raise CLIError(
            "%s@%s is not published on %s (latest is %s; recent: %s)"
            % (name, version, base, p.latest or "-", ", ".join(recent) or "none"),
            EXIT_NOT_FOUND,
        )
    return version, release


def _versionKey(v: str) -> Any:
    from fangs.npmregistry import versionKey

    return versionKey(v)


def registryURL(c: Context) -> str:
    return c.args.registry_url or os.environ.get("FANGS_REGISTRY_URL") or DEFAULT_REGISTRY
