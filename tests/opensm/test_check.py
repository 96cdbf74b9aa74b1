"""run_check: the report and exit status of ``pkeyd check FILE``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from pkeyd.opensm.check import run_check

G1 = "0x0002c90300000101"


def check(path: Path, *, json_output: bool = False, **options: bool) -> tuple[int, str]:
    out = io.StringIO()
    code = run_check(
        path,
        json_output=json_output,
        allow_both_pkeys=options.get("allow_both_pkeys", False),
        qos=options.get("qos", False),
        out=out,
    )
    return code, out.getvalue()


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    return tmp_path / "partitions.conf"


def test_clean_file(conf: Path) -> None:
    conf.write_text(f"Default=0x7fff : ALL, SELF=full ;\ntenant=0x0a12 : {G1}=full ;\n")
    code, out = check(conf)
    assert code == 0
    assert out == f"{conf}: 2 partitions, 3 member entries; ok\n"


def test_warnings_exit_1_with_file_and_line(conf: Path) -> None:
    conf.write_text(f"Default=0x7fff : ALL, SELF=full ;\ntenant=0x0a12 : {G1}=both ;\n")
    code, out = check(conf)
    assert code == 1
    first, summary = out.splitlines()
    assert first.startswith(f"{conf}:2: warning: both_not_allowed: ")
    assert summary.endswith("1 warning: OpenSM accepts it, read as shown")
    assert check(conf, allow_both_pkeys=True)[0] == 0


def test_fatal_exit_2(conf: Path) -> None:
    conf.write_text(f"Default=0x7fff : ALL, SELF=full ;\ntenant=0x0a12 : {G1}, all ;\n")
    code, out = check(conf)
    assert code == 2
    lines = out.splitlines()
    assert lines[0].startswith(f"{conf}:2: fatal: bad_guid: 'all' (keywords are case-sensitive)")
    assert "parsed before the error: 2 partitions, 3 member entries; FATAL" in lines[1]


def test_whole_file_findings_have_no_line(conf: Path) -> None:
    conf.write_text("# nothing here\n")
    code, out = check(conf)
    assert code == 2
    assert out.startswith(f"{conf}: fatal: no_statements: ")


def test_unreadable_file(tmp_path: Path) -> None:
    code, out = check(tmp_path / "missing.conf", json_output=True)
    assert code == 2
    report = json.loads(out)
    assert report["ok"] is False
    assert report["fatal"]["code"] == "unreadable"


def test_json_report(conf: Path) -> None:
    conf.write_text(
        "Default=0x7fff, ipoib : ALL, SELF=full ;\n"
        f"tenant=0x0a12, indx0 : {G1}=full, ALL_SWITCHES, AL=l ;\n"
        "media=0x0b01, ipoib :\n  mgid=ff12:401b::1,\n  SELF=full ;\n"
    )
    code, out = check(conf, json_output=True, qos=True)
    assert code == 1
    report = json.loads(out)
    assert report["file"] == str(conf)
    assert report["ok"] is True
    assert report["exit_code"] == 1
    assert report["options"] == {"allow_both_pkeys": False, "qos": True}
    assert report["fatal"] is None
    assert report["warnings"] == 2
    assert [d["code"] for d in report["diagnostics"]] == ["prefix_matched", "prefix_matched"]
    assert report["diagnostics"][0]["line"] == 2
    assert report["partitions"] == [
        {
            "pkey": "0x7fff",
            "name": "Default",
            "members": 2,
            "memberships": {"full": 1, "limited": 1, "both": 0},
            "keywords": ["ALL", "SELF"],
            "indx0": False,
            "ipoib": True,
            "sl": 0,
            "mgroups": [],
            "lines": [1],
        },
        {
            "pkey": "0x0a12",
            "name": "tenant",
            "members": 3,
            "memberships": {"full": 1, "limited": 2, "both": 0},
            "keywords": ["ALL", "ALL_SWITCHES"],
            "indx0": True,
            "ipoib": False,
            "sl": 0,
            "mgroups": [],
            "lines": [2],
        },
        {
            "pkey": "0x0b01",
            "name": "media",
            "members": 1,
            "memberships": {"full": 1, "limited": 0, "both": 0},
            "keywords": ["SELF"],
            "indx0": False,
            "ipoib": True,
            "sl": 0,
            "mgroups": ["ff12:401b:8b01::1"],
            "lines": [3],
        },
    ]


def test_json_fatal_report(conf: Path) -> None:
    conf.write_bytes(b"Default=0x7fff : ALL ;\r\n")
    code, out = check(conf, json_output=True)
    report = json.loads(out)
    assert code == 2
    assert report["ok"] is False
    assert report["fatal"] == {
        "line": 1,
        "severity": "fatal",
        "code": "no_partition_definition",
        "message": report["fatal"]["message"],
    }
    assert [d["code"] for d in report["diagnostics"]] == [
        "carriage_return",
        "no_partition_definition",
    ]
