"""The systemd files, checked by systemd's own tools (systemd is not PID 1 here).

`systemd-analyze verify` loads a unit as the manager would and reports every
unknown or invalid setting; it also insists that ExecStart= binaries exist,
so the unit is checked from a copy whose /opt/pkeyd/bin/pkeyd (the install
location, absent here) points at this venv's pkeyd.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
INSTALLED = "/opt/pkeyd/bin/pkeyd"

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (package systemd)"
)


def _pkeyd_binary() -> str:
    candidate = Path(sys.executable).with_name("pkeyd")
    return str(candidate) if candidate.exists() else shutil.which("pkeyd") or "/bin/true"


def _verify(unit: Path, *, debug: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "debug" if debug else "info"}
    return subprocess.run(
        ["systemd-analyze", "--man=no", "verify", str(unit)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_pkeyd_service_verifies_clean(tmp_path: Path) -> None:
    text = (SYSTEMD / "pkeyd.service").read_text()
    assert INSTALLED in text
    unit = tmp_path / "pkeyd.service"
    unit.write_text(text.replace(INSTALLED, _pkeyd_binary()))
    result = _verify(unit)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""
    assert result.stdout.strip() == ""


def test_a_broken_setting_would_be_reported(tmp_path: Path) -> None:
    """The check above can fail: a typo is reported."""
    text = (SYSTEMD / "pkeyd.service").read_text().replace(INSTALLED, _pkeyd_binary())
    unit = tmp_path / "pkeyd.service"
    unit.write_text(text.replace("WatchdogSec=30", "WatchdogSecs=30"))
    assert "Unknown key 'WatchdogSecs'" in _verify(unit).stderr


def test_unit_promises(tmp_path: Path) -> None:
    """The settings the daemon's behaviour relies on are the ones in the unit."""
    lines = set((SYSTEMD / "pkeyd.service").read_text().splitlines())
    for expected in (
        "Type=notify",
        "WatchdogSec=30",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "After=network.target opensm.service",
        "StateDirectory=pkeyd",
        "ProtectSystem=strict",
        "ReadWritePaths=/etc/opensm",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "RestartPreventExitStatus=2",
        f"ExecStart={INSTALLED} serve --config /etc/pkeyd/pkeyd.toml",
    ):
        assert expected in lines, expected


@pytest.mark.skipif(
    not Path("/lib/systemd/system/opensm@.service").exists(), reason="needs Debian's opensm"
)
def test_opensm_reload_drop_in(tmp_path: Path) -> None:
    shutil.copy("/lib/systemd/system/opensm@.service", tmp_path)
    shutil.copytree(SYSTEMD / "opensm@.service.d", tmp_path / "opensm@.service.d")
    result = _verify(tmp_path / "opensm@0x0002c90300000001.service", debug=True)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "pkeyd-reload.conf" in output  # the drop-in was loaded
    assert "ExecReload" in output
    assert "Unknown key" not in output
    assert "Invalid" not in output


@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
    reason="needs systemd-sysusers and systemd-tmpfiles",
)
def test_sysusers_and_tmpfiles_apply_to_a_scratch_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for argv in (
        ["systemd-sysusers", f"--root={root}", str(SYSTEMD / "pkeyd.sysusers")],
        ["systemd-tmpfiles", "--create", f"--root={root}", str(SYSTEMD / "pkeyd.tmpfiles")],
    ):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, (argv, result.stderr)
    assert "pkeyd:x:" in (root / "etc/passwd").read_text()
    opensm = (root / "etc/opensm").stat()
    assert oct(opensm.st_mode & 0o7777) == "0o1775"  # sticky: pkeyd replaces only its own files
    gid = next(
        int(line.split(":")[2])
        for line in (root / "etc/group").read_text().splitlines()
        if line.startswith("pkeyd:")
    )
    assert opensm.st_gid == gid
    assert not (root / "etc/opensm/partitions.conf").exists()  # never an empty one
