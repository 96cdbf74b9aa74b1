"""``python -m pkeyd.fabric.probe``: read every port's PKey table over SMPs.

On a simulated fabric the process must *start* with the simulator's
environment (``SimFabric.env``): LD_PRELOAD is applied by the dynamic loader at
exec time only, so a running Python cannot switch to libumad2sim.so later.
IBSIM_SOCKNAME and SIM_HOST are read later, when libibumad first touches
sysfs (our ``SmpFabricReader.open()``). Run it from a writable directory:
libumad2sim builds a fake sysfs under ``./sys-<pid>``.

Modes:
  (default)  one summary line per port, then the MAD counters
  --json     the FabricSnapshot as JSON
  --serve    JSON lines on stdin/stdout, one reader kept open between requests
             (tests drive it: read_all, read_port, set_pkey_block, stats)

Exit status: 0 read complete, 1 some ports unreadable, 2 no usable umad port.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from pkeyd.fabric.model import FabricError, FabricSnapshot
from pkeyd.fabric.reader import SmpFabricReader, SmpReaderConfig

EXIT_OK, EXIT_PARTIAL, EXIT_UNAVAILABLE = 0, 1, 2


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pkeyd.fabric.probe", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    mode.add_argument("--serve", action="store_true", help="JSON-lines requests on stdin")
    parser.add_argument("--ca", help="local CA name (default: first with an active port)")
    parser.add_argument("--port", type=int, help="local port number")
    parser.add_argument("--timeout-ms", type=int, default=500, help="per attempt (500)")
    parser.add_argument("--retries", type=int, default=3, help="after the first attempt (3)")
    parser.add_argument("--max-in-flight", type=int, default=64, help="MADs outstanding (64)")
    parser.add_argument("--switch-ports", action="store_true", help="also read switch tables")
    parser.add_argument("--node-desc", action="store_true", help="also read NodeDescription")
    return parser.parse_args(argv)


def _summary(snapshot: FabricSnapshot, out: TextIO) -> None:
    for p in snapshot.ports:
        members = " ".join(f"{e:#06x}" for e in p.members) or "-"
        out.write(
            f"{p.node_type.name:6} {p.port_guid:#018x} port {p.port_num:3} lid {p.lid:5} "
            f"{p.state.name:6} cap {p.partition_cap:3} {p.node_desc or '-':16} {members}\n"
        )
    for f in snapshot.failures:
        out.write(f"UNREAD {f.what}: {f.error}\n")
    stats = " ".join(f"{k}={v}" for k, v in snapshot.mad_stats.to_json().items())
    out.write(f"# {len(snapshot.ports)} ports in {snapshot.duration_s * 1000:.1f} ms; {stats}\n")


async def _handle(reader: SmpFabricReader, request: dict[str, Any]) -> Any:
    op = request.get("op")
    routing = request.get("routing", "directed")
    if op == "read_all":
        return (await reader.read_all()).to_json()
    if op == "read_port":
        return (await reader.read_port(int(request["port_guid"], 16), routing=routing)).to_json()
    if op == "set_pkey_block":
        entries = [int(e, 16) for e in request["entries"]]
        block = await reader.set_pkey_block(
            int(request["port_guid"], 16), int(request["block"]), entries, routing=routing
        )
        return [f"0x{e:04x}" for e in block]
    if op == "stats":
        return reader.stats.to_json()
    raise ValueError(f"unknown op {op!r}")


async def _serve(reader: SmpFabricReader) -> int:
    ready = {"ok": True, "result": {"local_port": _local(reader)}}
    print(json.dumps(ready), flush=True)
    while line := await asyncio.to_thread(sys.stdin.readline):
        try:
            reply: dict[str, Any] = {"ok": True, "result": await _handle(reader, json.loads(line))}
        except FabricError as exc:
            reply = {"ok": False, "error": {"code": exc.code, "message": exc.message}}
        except (ValueError, KeyError, TypeError) as exc:
            reply = {"ok": False, "error": {"code": "bad_request", "message": repr(exc)}}
        print(json.dumps(reply), flush=True)
    return EXIT_OK


def _local(reader: SmpFabricReader) -> dict[str, Any] | None:
    port = reader.local_port
    if port is None:
        return None
    return {
        "ca_name": port.ca_name,
        "port_num": port.port_num,
        "port_guid": f"0x{port.port_guid:016x}",
        "lid": port.lid,
        "state": port.state.name,
    }


async def _run(args: argparse.Namespace) -> int:
    config = SmpReaderConfig(
        timeout_s=args.timeout_ms / 1000,
        retries=args.retries,
        max_in_flight=args.max_in_flight,
        switch_ports=args.switch_ports,
        node_desc=args.node_desc,
    )
    try:
        reader = await SmpFabricReader.open(config, ca_name=args.ca, port_num=args.port)
    except FabricError as exc:
        print(f"probe: {exc.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    async with reader:
        if args.serve:
            return await _serve(reader)
        snapshot = await reader.read_all()
    if args.json:
        json.dump(snapshot.to_json(), sys.stdout)
        sys.stdout.write("\n")
    else:
        _summary(snapshot, sys.stdout)
    return EXIT_PARTIAL if snapshot.failures else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if os.environ.get("IBSIM_SOCKNAME") and "umad2sim" not in os.environ.get("LD_PRELOAD", ""):
        print(
            "probe: IBSIM_SOCKNAME is set but libumad2sim.so is not preloaded; "
            "this reads real hardware (start the process with LD_PRELOAD)",
            file=sys.stderr,
        )
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
