"""Rate limits under concurrency, end to end: many requests at once at daphne and Redis."""

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
from django.conf import settings

from tests.conftest import keys_upload_body

PASSWORD = "a long pass phrase 42"


def test_a_login_storm_against_a_live_server_is_held_to_the_bucket(natter_server):
    """Logins are slow on purpose (password hashing), so the storm takes seconds and the
    bucket refills meanwhile (one login every 3 s): at most that many more get through."""
    handle = f"target_{uuid.uuid4().hex[:8]}"
    url = natter_server.url
    register = {"username": handle, "password": PASSWORD}
    assert httpx.post(f"{url}/api/v1/auth/register", json=register).status_code == 201
    limit = settings.NATTER["LOGIN_RATE"]

    async def storm():
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            body = {"username": handle, "password": "not the password"}
            return await asyncio.gather(
                *[http.post("/api/v1/auth/login", json=body) for _ in range(limit + 15)]
            )

    started = time.monotonic()
    answers = asyncio.run(storm())
    refilled = int((time.monotonic() - started) / (60 / limit))
    codes = [r.status_code for r in answers]
    # Past the bucket: 401 (checked, wrong password) or, when more logins hash at once
    # than the server has database connections, 503 (retry later); the rest 429.
    admitted = codes.count(401) + codes.count(503)
    assert admitted + codes.count(429) == len(codes)
    assert limit <= admitted <= limit + refilled
    refused = next(r for r in answers if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limited"


def test_concurrent_key_claims_against_a_live_server_let_only_the_bucket_through(
    natter_server,
):
    url = natter_server.url
    logins = {}
    for name in ("claimer", "claimed"):
        handle = f"{name}_{uuid.uuid4().hex[:8]}"
        httpx.post(f"{url}/api/v1/auth/register", json={"username": handle, "password": PASSWORD})
        answer = httpx.post(
            f"{url}/api/v1/auth/login", json={"username": handle, "password": PASSWORD}
        ).json()
        body, _ = keys_upload_body(one_time=5)
        headers = {"Authorization": f"Bearer {answer['token']}"}
        assert httpx.put(f"{url}/api/v1/keys", json=body, headers=headers).status_code == 200
        logins[name] = answer
    limit = settings.NATTER["KEY_CLAIM_RATE_PER_USER"]

    def claim(_):
        return httpx.post(
            f"{url}/api/v1/keys/claim",
            json={"user_id": logins["claimed"]["user"]["id"]},
            headers={"Authorization": f"Bearer {logins['claimer']['token']}"},
            timeout=30,
        ).status_code

    # Ten at a time: as many as the live server has database connections (DB_POOL_MAX).
    # The bucket refills one claim every 60 / limit seconds; on a slow machine the
    # burst outlasts that (31 of 40 got through in one run), so what refilled
    # meanwhile may get through too, and nothing more.
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=10) as pool:
        codes = list(pool.map(claim, range(limit + 10)))
    refilled = int((time.monotonic() - started) / (60 / limit))
    assert codes.count(200) + codes.count(429) == len(codes)
    assert limit <= codes.count(200) <= limit + refilled
