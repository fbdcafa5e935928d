"""
Tenants: the teams one fangs serves.

A tenant is a short name (C{[a-z0-9][a-z0-9-]{0,62}}).  A fresh install has
only C{default} and needs no configuration.  Every principal belongs to one
tenant or, with L{ALL_TENANTS}, is an admin of all of them.  Pure logic: no
Twisted, no storage.
"""

from __future__ import annotations

import re
from typing import Optional

DEFAULT_TENANT = "default"
#: The tenant of a principal that may act on every tenant (an all-tenant
#: admin, a runner, the unauthenticated local mode), and of objects shared
#: by every tenant (configuration allowlist entries).
ALL_TENANTS = "*"
#: The request header that selects the tenant for a principal of several.
TENANT_HEADER = b"x-fangs-tenant"

_TENANT = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class TenantError(ValueError):
    """
    Not a tenant name.
    """


def checkTenant(name: object, allowAll: bool = False) -> str:
    """
    C{name} when it is a tenant name (or, with C{allowAll}, C{*}).

    @raise TenantError: it is not.
    """
    if allowAll and name == ALL_TENANTS:
        return ALL_TENANTS
    if not isinstance(name, str) or not _TENANT.match(name):
        shown = name[:70] if isinstance(name, str) else type(name).__name__
        raise TenantError("tenant %r is not a tenant name (1-63 of a-z, 0-9 and -, starting with a letter or digit)" % (shown,))
    return name


def selectTenant(own: str, asked: Optional[str]) -> Optional[str]:
    """
    The tenant a principal of tenant C{own} acts on when it asks for
    C{asked} (the C{X-Fangs-Tenant} header, or None): its own, or, for an
    all-tenant principal, the one it asks for, or None (all tenants; for
    tenant-scoped objects that means L{DEFAULT_TENANT}).

    @raise TenantError: C{asked} is not a tenant name.
    @raise PermissionError: C{asked} is a tenant C{own} does not belong to.
    """
    if asked is not None:
        asked = checkTenant(asked)
    if own == ALL_TENANTS:
        return asked
    if asked is not None and asked != own:
        raise PermissionError(asked)
    return own
