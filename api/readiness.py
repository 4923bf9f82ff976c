"""Whether the worker roles a request needs can serve (shared.store.roles): /readyz reports them,
and a search or an ingest is refused at once with 503 and the reason while its role cannot."""
from __future__ import annotations

import redis

from api.context import services
from api.errors import ApiError
from shared.store import roles

SERVING_ROLES = ("encode", "query")  # ingest needs an encode worker, search a query worker


def roles_not_ready(r: redis.Redis) -> dict[str, str]:
    """role -> why it cannot serve yet, for the roles without a ready process (one round trip)."""
    return roles.not_ready(roles.processes(r), SERVING_ROLES)


def require_role(role: str, what: str) -> None:
    """503 `unavailable` naming the reason unless a process of `role` is ready."""
    reasons = roles.not_ready(roles.processes(services().redis), (role,))
    if reasons:
        raise ApiError(503, "unavailable", f"{what} cannot be served yet: {reasons[role]}",
                       {"not_ready": reasons})
