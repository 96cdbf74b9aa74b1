"""The reconciler's safety net and its handling of edits behind pkeyd's back."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
import structlog

from pkeyd.api import app as app_module
from pkeyd.config import Settings
from pkeyd.domain import DesiredState
from pkeyd.opensm import render as render_module
from pkeyd.opensm.fastpath import Steps
from pkeyd.opensm.render import is_intact_render
from tests.helpers import Daemon, running_daemon
from tests.unit.conftest import CountingReloader

G1 = "0x0002c90300000011"


async def _until(daemon: Daemon, key: str, within_s: float = 10.0) -> dict[str, object]:
    for _ in range(int(within_s / 0.02)):
        status: dict[str, object] = await daemon.json("GET", "/api/v1/status", 200)
        if status[key]:
            return status
        await asyncio.sleep(0.02)
    raise AssertionError(f"status never had {key}: {status}")


async def _create(daemon: Daemon, name: str = "a", pkey: str = "0x10") -> None:
    body = {"name": name, "pkey": pkey, "members": [{"guid": G1}]}
    await daemon.json("POST", "/api/v1/partitions", 201, json=body)


async def test_edit_behind_pkeyds_back_is_kept_and_restored(
    settings: Settings, reloader: CountingReloader
) -> None:
    fast = dataclasses.replace(settings, resync_interval_s=0.05)
    async with running_daemon(fast, reloader) as d:
        await _create(d)
        await d.wait_applied()
        ours = fast.partitions_conf.read_bytes()
        fast.partitions_conf.write_text("Default=0x7fff : ALL=full ;\n")
        status = await _until(d, "external_edit")
        edit = status["external_edit"]
        assert isinstance(edit, dict)
        assert edit["kind"] == "edited"
        assert Path(str(edit["saved_to"])).read_text() == "Default=0x7fff : ALL=full ;\n"
        for _ in range(200):
            if fast.partitions_conf.read_bytes() == ours:
                break
            await asyncio.sleep(0.02)
        assert fast.partitions_conf.read_bytes() == ours
        metrics = await (await d.client.get("/metrics")).text()
        assert "pkeyd_external_edits_total 1.0" in metrics


async def test_hold_policy_stops_applying_until_resumed(
    settings: Settings, reloader: CountingReloader
) -> None:
    hold = dataclasses.replace(settings, resync_interval_s=0.05, on_external_edit="hold")
    async with running_daemon(hold, reloader) as d:
        await _create(d)
        await d.wait_applied()
        hold.partitions_conf.unlink()
        status = await _until(d, "held")
        edit = status["external_edit"]
        assert isinstance(edit, dict)
        assert (edit["kind"], edit["saved_to"]) == ("deleted", None)
        await _create(d, "b", "0x11")  # accepted and stored, not applied while held
        await asyncio.sleep(0.3)
        assert not hold.partitions_conf.exists()
        await d.json("POST", "/api/v1/reconcile/resume", 200)
        await d.wait_applied()
        assert "b=0x0011 : " in hold.partitions_conf.read_text()


async def test_hand_written_file_is_kept_when_taken_over(
    settings: Settings, reloader: CountingReloader
) -> None:
    settings.partitions_conf.write_text("Default=0x7fff : ALL=full ;\n")
    async with running_daemon(settings, reloader) as d:
        status = await d.wait_applied()
        edit = status["external_edit"]
        assert edit["kind"] == "taken_over"
        assert Path(edit["saved_to"]).read_text() == "Default=0x7fff : ALL=full ;\n"
        assert settings.partitions_conf.read_text().startswith("# partitions.conf for OpenSM")


async def test_a_render_that_reads_back_wrong_never_goes_live(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _create(daemon)
    await daemon.wait_applied()
    good = daemon.settings.partitions_conf.read_bytes()

    def broken(state: DesiredState) -> Steps[str]:
        # A stray line OpenSM would choke on: every partition would fall back.
        text = yield from render_module.render_steps(state)
        return text + "oops\n"

    monkeypatch.setattr("pkeyd.reconcile.render_steps", broken)
    await _create(daemon, "b", "0x11")
    status = await _until(daemon, "refused")
    refused = status["refused"]
    assert isinstance(refused, dict)
    assert any("fatal" in p for p in refused["problems"])
    assert status["pending"] is True
    assert daemon.settings.partitions_conf.read_bytes() == good
    metrics = await (await daemon.client.get("/metrics")).text()
    assert 'pkeyd_refused_writes_total{reason="self_check"} 1.0' in metrics

    monkeypatch.setattr("pkeyd.reconcile.render_steps", render_module.render_steps)
    await _create(daemon, "c", "0x12")
    status = await daemon.wait_applied()
    assert status["refused"] is None
    assert "c=0x0012 : " in daemon.settings.partitions_conf.read_text()


def _members_gauge(metrics: str) -> dict[str, float]:
    found = {}
    for line in metrics.splitlines():
        if line.startswith("pkeyd_members{"):
            label, value = line.split("} ")
            found[label.split('"')[1]] = float(value)
    return found


async def test_member_gauges_follow_changes_and_deletions(
    settings: Settings, reloader: CountingReloader
) -> None:
    async with running_daemon(settings, reloader) as d:
        await _create(d)  # G1 full in 0x10
        members = [{"guid": f"0x0002c903000000{i:02x}", "membership": "limited"} for i in (1, 2)]
        await d.json("POST", "/api/v1/partitions", 201, json={"name": "b", "pkey": "0x11"})
        await d.json("POST", "/api/v1/partitions/0x11/members", 200, json={"members": members})
        await d.wait_applied()
        gauge = _members_gauge(await (await d.client.get("/metrics")).text())
        assert gauge == {"full": 1.0, "limited": 2.0, "both": 0.0}
        # One partition changes, the other is counted as before.
        await d.json("POST", "/api/v1/partitions/0x10/members", 200,
                     json={"members": [{"guid": G1, "membership": "limited"}]})  # fmt: skip
        await d.wait_applied()
        gauge = _members_gauge(await (await d.client.get("/metrics")).text())
        assert gauge == {"full": 0.0, "limited": 3.0, "both": 0.0}
        await d.json("DELETE", "/api/v1/partitions/0x11", 204)
        await d.wait_applied()
        gauge = _members_gauge(await (await d.client.get("/metrics")).text())
        assert gauge == {"full": 0.0, "limited": 1.0, "both": 0.0}


async def test_a_write_acknowledged_just_before_stop_is_applied_on_the_way_out(
    settings: Settings, reloader: CountingReloader
) -> None:
    # Commits wait 5 s for calm before a pass: only the stop's last pass can apply it.
    slow = dataclasses.replace(settings, coalesce_delay_s=5.0, coalesce_max_s=5.0)
    async with running_daemon(slow, reloader) as d:
        await d.wait_applied()
        await _create(d)
        assert "a=0x0010" not in slow.partitions_conf.read_text()
    assert "a=0x0010 : " in slow.partitions_conf.read_text()
    assert is_intact_render(slow.partitions_conf.read_bytes())


class _HangingReloader(CountingReloader):
    """An OpenSM whose reload never returns, once `hang` is set."""

    hang = False

    async def reload(self) -> None:
        if self.hang:
            await asyncio.Event().wait()
        await super().reload()


async def test_the_stops_last_pass_is_bounded(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = dataclasses.replace(settings, coalesce_delay_s=5.0, coalesce_max_s=5.0)
    monkeypatch.setattr(app_module, "FINAL_PASS_S", 0.2)
    reloader = _HangingReloader()
    with structlog.testing.capture_logs() as logs:
        async with asyncio.timeout(30):  # a stop that never ends fails here
            async with running_daemon(slow, reloader) as d:
                await d.wait_applied()
                reloader.hang = True
                await _create(d)
    assert "a=0x0010 : " in slow.partitions_conf.read_text()  # written; the reload hung
    cut = [e for e in logs if e["event"] == "final_pass_incomplete"]
    assert len(cut) == 1
    assert cut[0]["within_s"] == 0.2
