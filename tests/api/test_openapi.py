"""The served OpenAPI document describes exactly the routes the app has."""

from __future__ import annotations

import json
import urllib.request

import schemathesis

from pkeyd.api.app import create_app
from pkeyd.api.openapi import openapi_document
from tests.api.conftest import LiveServer, api_settings

_METHODS = {"get", "put", "post", "patch", "delete"}


def _app_routes(tmp_path: object) -> set[tuple[str, str]]:
    from pathlib import Path

    app = create_app(api_settings(Path(str(tmp_path))))
    found = set()
    for route in app.router.routes():
        method = route.method.lower()
        if method in _METHODS:
            info = route.resource.get_info() if route.resource else {}
            path = info.get("formatter") or info.get("path")
            found.add((method, str(path)))
    return found


def _document_routes() -> set[tuple[str, str]]:
    paths = openapi_document()["paths"]
    return {(m, path) for path, item in paths.items() for m in item if m in _METHODS}


def test_every_route_is_described_and_nothing_else(tmp_path: object) -> None:
    served, described = _app_routes(tmp_path), _document_routes()
    assert served - described == set(), "routes missing from the OpenAPI document"
    assert described - served == set(), "documented routes the app does not serve"


def test_every_operation_documents_its_answers() -> None:
    for path, item in openapi_document()["paths"].items():
        for method, op in item.items():
            if method not in _METHODS:
                continue
            assert op.get("operationId"), (method, path)
            assert any(code.startswith("2") for code in op["responses"]), (method, path)
            if "{" in path or "requestBody" in op:  # input that can be wrong
                assert any(code.startswith("4") for code in op["responses"]), (method, path)
            if path != "/healthz":
                assert {"401", "403"} <= set(op["responses"]), (method, path)


def test_the_document_is_served_and_loads_as_openapi(live_server: LiveServer) -> None:
    with urllib.request.urlopen(f"{live_server.url}/api/v1/openapi.json") as resp:
        served = json.load(resp)
    assert served == json.loads(json.dumps(openapi_document()))
    schema = schemathesis.openapi.from_dict(served)
    assert len(list(schema.get_all_operations())) == sum(
        1 for item in served["paths"].values() for m in item if m in _METHODS
    )
