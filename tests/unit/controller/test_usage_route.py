"""``PUT /cluster/v1/gateways/{id}/usage`` over HTTP (the controller's app, in process): a
gateway's report in, the others' out; malformed reports are 400s, never 500s."""

from __future__ import annotations

import time

import httpx
import pytest

from corral.controller.service import ControllerService
from corral.core.usage import KeyUsage, UsageReport, report_from_json, report_to_json
from corral.registry.embedded import EmbeddedRegistry
from corral.state.memory import MemoryStateStore

TOKEN = "cluster-token"


@pytest.fixture
async def client() -> httpx.AsyncClient:
    service = ControllerService(EmbeddedRegistry(), MemoryStateStore(), TOKEN, None)
    transport = httpx.ASGITransport(app=service.app)
    return httpx.AsyncClient(transport=transport, base_url="http://controller",
                             headers={"authorization": f"Bearer {TOKEN}"})


def report(gateway: str, requests: int) -> UsageReport:
    return UsageReport(gateway, 1.0, time.time(), {"key_a": KeyUsage(requests, 10 * requests, 1, "2026-12-08", requests, 0)})


async def test_each_gateway_gets_the_others_reports(client: httpx.AsyncClient) -> None:
    a = await client.put("/cluster/v1/gateways/gw-a/usage", content=report_to_json(report("gw-a", 3)))
    assert a.status_code == 200 and a.json() == []
    b = await client.put("/cluster/v1/gateways/gw-b/usage", content=report_to_json(report("gw-b", 5)))
    (seen,) = [report_from_json(httpx.Response(200, json=item).content) for item in b.json()]
    assert seen.gateway_id == "gw-a" and seen.keys["key_a"].requests == 3


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"gateway_id":"gw-a"}',
                                  b'{"gateway_id":"gw-a","started_at":1,"at":2,"keys":{"k":[1]}}',
                                  b'{"gateway_id":"gw-a","started_at":"x","at":2,"keys":{}}'])
async def test_malformed_reports_are_400(client: httpx.AsyncClient, body: bytes) -> None:
    resp = await client.put("/cluster/v1/gateways/gw-a/usage", content=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["type"] == "invalid_request_error"


async def test_a_report_for_another_gateway_is_400_and_the_token_is_required(client: httpx.AsyncClient) -> None:
    resp = await client.put("/cluster/v1/gateways/gw-b/usage", content=report_to_json(report("gw-a", 1)))
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "gateway_id"
    anonymous = await client.put("/cluster/v1/gateways/gw-a/usage", content=report_to_json(report("gw-a", 1)),
                                 headers={"authorization": ""})
    assert anonymous.status_code == 401
