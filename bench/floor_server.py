"""The HTTP framework alone: aiohttp answering one stored document, for scale.

`python -m bench.floor_server PORT DOCUMENT`: every GET answers the bytes of
DOCUMENT; every POST reads and decodes its JSON body, then answers the same.
No store, no auth, no checks, no logging: what aiohttp itself costs per
request on this machine, so that pkeyd's figures can be read against it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from aiohttp import web


def app(document: bytes) -> web.Application:
    async def get(_: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    async def post(request: web.Request) -> web.Response:
        json.loads(await request.read())
        return web.Response(body=document, content_type="application/json")

    served = web.Application()
    served.router.add_get("/{path:.*}", get)
    served.router.add_post("/{path:.*}", post)
    return served


def main() -> None:
    port, document = int(sys.argv[1]), Path(sys.argv[2]).read_bytes()
    web.run_app(app(document), host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
