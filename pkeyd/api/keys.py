"""Typed application keys: how handlers reach the collaborators the factory wired."""

from __future__ import annotations

import asyncio

from aiohttp import web

from pkeyd.api.bodies import PartitionBodies
from pkeyd.auth import TokenCache, TokenService
from pkeyd.config import Settings
from pkeyd.metrics import Metrics
from pkeyd.reconcile import Reconciler
from pkeyd.service import PartitionService
from pkeyd.verification import Verifier

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
SERVICE = web.AppKey("service", PartitionService)
RECONCILER = web.AppKey("reconciler", Reconciler)
VERIFIER: web.AppKey[Verifier | None] = web.AppKey("verifier")
BODIES = web.AppKey("bodies", PartitionBodies)
BACKGROUND_TASKS = web.AppKey("background_tasks", dict[str, asyncio.Task[None]])
TOKEN_SERVICE = web.AppKey("token_service", TokenService)
TOKEN_CACHE = web.AppKey("token_cache", TokenCache)


# Who made a request, for the audit trail: the auth middleware stores the
# token's name under this request key; without auth it is "anonymous".
ACTOR = web.RequestKey("actor", str)


def actor_of(request: web.Request) -> str:
    actor: str = request.get(ACTOR, "anonymous")
    return actor
