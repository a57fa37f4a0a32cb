"""Tenants: whose conversations, saved voices and jobs these are.

The self-hosted server names a tenant per API key and puts it on the job (`Job.tenant`, jobs/job.py);
every store then keeps that tenant's data apart. `None` is the default namespace: RunPod queue
jobs (a worker never sees the caller's key) and a server run without keys. Its storage layout is the
one the worker always had, so existing voices and conversations stay where they are.
"""

from __future__ import annotations

import re
from typing import Any

# Letters, digits, "_" and "-" only: a tenant names a directory and part of a Redis key, and can
# never contain the "/" that separates it from the ids inside it.
TENANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def validate_tenant(tenant: Any) -> str | None:
    """`tenant` if it is None or a safe tenant name, else ValueError saying why."""
    if tenant is None:
        return None
    if not isinstance(tenant, str) or not TENANT_PATTERN.fullmatch(tenant):
        raise ValueError(
            f"invalid tenant {str(tenant)[:40]!r}: use 1-64 letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return tenant
