"""``journey intake`` and the tracking SDKs we did not write (domain.md section 10)."""

from __future__ import annotations

import asyncio
import base64

KEY = "wk-sdk-test-1"
WRONG = "wk-not-one-of-ours"


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def test_error_answers_carry_segment_code_and_message():
    """Segment's SDKs read ``code`` and ``message`` from an answer that is not 200 (rudder-sdk-python's
    ``APIError(status, payload['code'], payload['message'])``): without them it takes a 401 for a network
    failure and retries it."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from journey.intake.keys import WriteKeys
    from journey.intake.service import Intake

    async def go():
        i = Intake("kafka://127.0.0.1:9", WriteKeys(KEY))
        app = web.Application()
        app.router.add_post("/v1/batch", i._handler("batch"))
        answers = []
        async with TestClient(TestServer(app)) as client:
            r = await client.post("/v1/batch", data=b"{}")                         # Kafka not up yet
            answers.append((r.status, await r.json()))
            i.kafka_up = True
            r = await client.post("/v1/batch", data=b"{}", headers={"Authorization": basic(WRONG)})
            answers.append((r.status, await r.json()))
            r = await client.post("/v1/batch", data=b'{"batch": []}')              # no key at all
            answers.append((r.status, await r.json()))
            r = await client.post("/v1/batch", data=b"nope", headers={"Authorization": basic(KEY)})
            answers.append((r.status, await r.json()))
        return answers

    answers = asyncio.run(go())
    assert [s for s, _ in answers] == [503, 401, 401, 400]
    for status, a in answers:
        assert a["success"] is False and isinstance(a["code"], str) and a["code"], (status, a)
        assert isinstance(a["message"], str) and a["message"] == a["error"], (status, a)
    assert [a["code"] for _s, a in answers] == ["unavailable", "invalid_write_key", "invalid_write_key", "bad_request"]
