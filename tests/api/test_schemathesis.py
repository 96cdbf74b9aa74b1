"""schemathesis against the served OpenAPI document: no 5xx, no answer that breaks it.

Bounded: a few dozen generated requests per operation (valid and invalid
ones), enough to walk every documented parameter and body shape while the
suite stays fast.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation.case import Case

from pkeyd.api.openapi import openapi_document
from tests.api.conftest import LiveServer

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


# /ufmRestV2 and /ufmRestV3 are the same handlers as /ufmRest (tests/unit/
# test_ufm_api.py proves every prefix): generating for them too would triple
# the UFM share of the budget and test nothing more.
schema = schemathesis.openapi.from_dict(openapi_document()).exclude(path_regex="^/ufmRestV[23]/")


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_answers_as_documented(case: Case[Any], live_server: LiveServer) -> None:
    case.call_and_validate(base_url=live_server.url, checks=CHECKS)
