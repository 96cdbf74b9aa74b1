"""``pkeyd check FILE``: would OpenSM read this partitions.conf as intended?

Exit status: 0 clean, 1 warnings only (OpenSM accepts the file but reads
something other than what was probably meant), 2 fatal (OpenSM rejects the
whole file and falls back to its no-config default) or unreadable file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from pkeyd.opensm.parse import parse
from pkeyd.opensm.parsed import Diagnostic, ParsedPartition, ParseResult

EXIT_CLEAN, EXIT_WARNINGS, EXIT_FATAL = 0, 1, 2


def run_check(
    path: Path, *, json_output: bool, allow_both_pkeys: bool, qos: bool, out: TextIO
) -> int:
    """Check ``path`` as OpenSM would read it; write a report to ``out``; return the exit code."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        unreadable = Diagnostic(0, "fatal", "unreadable", f"cannot read the file: {exc.strerror}")
        result = ParseResult((), (unreadable,))
    else:
        result = parse(data, allow_both_pkeys=allow_both_pkeys, qos=qos)
    code = exit_code(result)
    if json_output:
        report = as_json(path, result, allow_both_pkeys=allow_both_pkeys, qos=qos)
        out.write(json.dumps(report, indent=2) + "\n")
    else:
        for diagnostic in result.diagnostics:
            out.write(format_diagnostic(path, diagnostic) + "\n")
        out.write(summary(path, result) + "\n")
    return code


def exit_code(result: ParseResult) -> int:
    if not result.ok:
        return EXIT_FATAL
    return EXIT_WARNINGS if result.diagnostics else EXIT_CLEAN


def format_diagnostic(path: Path, d: Diagnostic) -> str:
    """``FILE:LINE: severity: code: message`` (no line for whole-file findings)."""
    where = f"{path}:{d.line}" if d.line else f"{path}"
    return f"{where}: {d.severity}: {d.code}: {d.message}"


def summary(path: Path, result: ParseResult) -> str:
    partitions = len(result.partitions)
    members = sum(len(p.entries) for p in result.partitions)
    groups = sum(len(p.mgroups) for p in result.partitions)
    counts = f"{partitions} partition{_s(partitions)}, {members} member entr"
    counts += "y" if members == 1 else "ies"
    if groups:
        counts += f", {groups} multicast group{_s(groups)}"
    warnings = len(result.warnings)
    if not result.ok:
        verdict = (
            "FATAL: OpenSM rejects the whole file and falls back to its default "
            "(every port a full member of 0x7fff, all other partitions removed)"
        )
        if partitions:
            counts = f"parsed before the error: {counts}"
    elif warnings:
        verdict = f"{warnings} warning{_s(warnings)}: OpenSM accepts it, read as shown"
    else:
        verdict = "ok"
    return f"{path}: {counts}; {verdict}"


def as_json(
    path: Path, result: ParseResult, *, allow_both_pkeys: bool, qos: bool
) -> dict[str, Any]:
    """A stable report object; PKeys as "0x%04x" strings, counts as integers."""
    fatal = result.fatal
    return {
        "file": str(path),
        "ok": result.ok,
        "exit_code": exit_code(result),
        "options": {"allow_both_pkeys": allow_both_pkeys, "qos": qos},
        "fatal": _diagnostic(fatal) if fatal is not None else None,
        "warnings": len(result.warnings),
        "diagnostics": [_diagnostic(d) for d in result.diagnostics],
        "partitions": [_partition(p) for p in result.partitions],
    }


def _diagnostic(d: Diagnostic) -> dict[str, Any]:
    return {"line": d.line, "severity": d.severity, "code": d.code, "message": d.message}


def _partition(p: ParsedPartition) -> dict[str, Any]:
    memberships = {"full": 0, "limited": 0, "both": 0}
    for entry in p.entries:
        memberships[entry.membership] += 1
    return {
        "pkey": f"0x{p.pkey:04x}",
        "name": p.name,
        "members": len(p.entries),
        "memberships": memberships,
        "keywords": sorted({e.target for e in p.entries if not e.target.startswith("0x")}),
        "indx0": any(e.indx0 for e in p.entries),
        "ipoib": p.ipoib,
        "sl": p.sl,
        "mgroups": [g.mgid for g in p.mgroups],
        "lines": list(p.lines),
    }


def _s(n: int) -> str:
    return "" if n == 1 else "s"
