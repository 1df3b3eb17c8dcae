"""Fixed-window rate limits kept in the cache (Redis when configured).

`cache.add` + `cache.incr` are atomic on Redis, so concurrent requests from
several processes count against one bucket.
"""

import time

from django.core.cache import cache

from apps.common.errors import RateLimited


def rate_limit_hit(*, scope: str, key: str, limit: int, period_s: int) -> None:
    """Count one hit of `key` in `scope`; raise RateLimited past `limit` per period."""
    if limit <= 0:
        return
    now = time.time()
    window = int(now // period_s)
    bucket = f"rl:{scope}:{key}:{window}"
    cache.add(bucket, 0, timeout=period_s + 1)
    try:
        count = cache.incr(bucket)
    except ValueError:  # the bucket expired between add and incr
        cache.add(bucket, 1, timeout=period_s + 1)
        count = 1
    if count > limit:
        retry_after = max(1, int((window + 1) * period_s - now + 0.999))
        raise RateLimited(f"Too many requests for {scope}; retry later.", retry_after=retry_after)
