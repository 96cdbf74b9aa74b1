"""Typed application keys: how handlers reach the collaborators the factory wired."""

from __future__ import annotations

import asyncio

from aiohttp import web

from pkeyd.config import Settings
from pkeyd.metrics import Metrics
from pkeyd.reconcile import Reconciler
from pkeyd.service import PartitionService

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
SERVICE = web.AppKey("service", PartitionService)
RECONCILER = web.AppKey("reconciler", Reconciler)
RECONCILE_TASK = web.AppKey("reconcile_task", asyncio.Task[None])
