"""The registry's two backends keep the same promises (Redis and the in-process one)."""

import time

import pytest

from apps.presence.store import MemoryPresenceStore, RedisPresenceStore, Touched


@pytest.fixture(params=["memory", "redis"])
def store(request, settings):
    if request.param == "memory":
        return MemoryPresenceStore()
    url = settings.NATTER["PRESENCE_REDIS_URL"]
    if not url:
        pytest.skip("needs REDIS_URL")
    store = RedisPresenceStore(url)
    store.client.flushdb()
    return store


T = 1_800_000_000.0
TTL = 30


def touch(store, device, *, user=1, at=T, conn=None, process="p1", first=False, ttl=TTL):
    return store.touch(
        user_id=user,
        device_id=device,
        conn=conn or f"c{device}",
        process=process,
        transport="ws",
        since=at,
        ttl_s=ttl,
        now=at,
        first=first,
        visibility="everyone",
    )


def release(store, device, *, user=1, at=T, conn=None, process="p1", grace=5):
    return store.release(
        user_id=user,
        device_id=device,
        conn=conn or f"c{device}",
        process=process,
        now=at,
        grace_s=grace,
        last_seen=f"2027-01-15T08:00:{int(at - T):02d}.000000Z",
    )


def test_a_user_comes_online_once_whatever_the_number_of_devices(store):
    assert touch(store, 11, first=True) == Touched(True, "everyone")
    assert touch(store, 12, first=True) == Touched(False, None)
    assert touch(store, 11, at=T + 10) == Touched(False, None)
    assert store.statuses(user_ids=[1, 2], now=T + 10)[1].online
    assert not store.statuses(user_ids=[1, 2], now=T + 10)[2].online


def test_offline_is_due_after_the_grace_when_the_last_device_leaves(store):
    touch(store, 11, first=True)
    touch(store, 12, first=True)
    assert release(store, 11, at=T + 1) is False  # device 12 still there
    assert release(store, 12, at=T + 2) is True
    assert store.statuses(user_ids=[1], now=T + 3)[1].online  # still, within the grace
    assert store.settle(user_id=1, now=T + 6) is None  # not due yet
    assert store.settle(user_id=1, now=T + 7) == ("2027-01-15T08:00:02.000000Z", "everyone")
    assert store.settle(user_id=1, now=T + 8) is None  # claimed once only
    state = store.statuses(user_ids=[1], now=T + 8)[1]
    assert not state.online and state.last_seen == "2027-01-15T08:00:02.000000Z"


def test_coming_back_within_the_grace_cancels_the_offline(store):
    touch(store, 11, first=True)
    release(store, 11, at=T + 1)
    assert touch(store, 11, at=T + 3, conn="again", first=True) == Touched(False, None)
    assert store.settle(user_id=1, now=T + 10) is None
    assert store.statuses(user_ids=[1], now=T + 10)[1].online


def test_releasing_an_older_connection_leaves_the_newer_one(store):
    touch(store, 11, conn="old", process="p1", first=True)
    touch(store, 11, conn="new", process="p2", at=T + 1, first=True)
    assert release(store, 11, conn="old", process="p1", at=T + 2) is False
    assert [d["conn"] for d in store.devices_of_user(user_id=1, now=T + 2)] == ["new"]
    assert store.due(now=T + 100, limit=10) == []


def test_an_entry_not_refreshed_within_its_ttl_expires_and_its_user_becomes_due(store):
    touch(store, 11, first=True)
    touch(store, 11, at=T + 20)  # the last heartbeat
    assert store.expire(now=T + 49, ttl_s=TTL, limit=10) == []
    [gone] = store.expire(now=T + 51, ttl_s=TTL, limit=10)
    assert (gone.user_id, gone.device_id, gone.user_offline) == (1, 11, True)
    assert gone.last_seen == "2027-01-15T08:00:20.000000Z"
    assert store.due(now=T + 51, limit=10) == [1]
    assert store.settle(user_id=1, now=T + 51) == (gone.last_seen, "everyone")


def test_a_user_whose_entries_are_not_refreshed_is_offline_by_itself_within_the_ttl(store):
    now = time.time()
    touch(store, 11, at=now, first=True, ttl=1)
    assert store.statuses(user_ids=[1], now=time.time())[1].online
    time.sleep(1.1)  # no sweep, no release: a crashed process does neither
    assert not store.statuses(user_ids=[1], now=time.time())[1].online
    assert store.devices_of_user(user_id=1, now=time.time()) == []


def test_an_expired_device_of_a_user_still_online_elsewhere_is_not_an_offline(store):
    touch(store, 11, first=True)
    touch(store, 12, first=True, ttl=300)
    [gone] = store.expire(now=T + 31, ttl_s=TTL, limit=10)
    assert gone.device_id == 11 and not gone.user_offline
    assert store.due(now=T + 31, limit=10) == []


def test_processes_and_devices_are_listed_while_live(store):
    touch(store, 11, process="p1", first=True)
    touch(store, 12, process="p1", first=True)
    touch(store, 21, user=2, process="p2", first=True, ttl=60)
    assert sorted((p, n) for p, n, _ in store.processes(now=T + 1)) == [("p1", 2), ("p2", 1)]
    assert {d["device_id"] for d in store.devices_on_process(process="p1", now=T, limit=10)} == {
        11,
        12,
    }
    assert sorted((p, n) for p, n, _ in store.processes(now=T + 31)) == [("p2", 1)]
    store.prune(now=T + 31)
    assert store.devices_of_user(user_id=1, now=T + 31) == []


def test_the_rate_limit_counts_hits_per_window_and_says_how_long_to_wait(store):
    assert [store.hit(key="k", limit=2, period_s=10, now=T + 1) for _ in range(3)] == [0, 0, 9]
    assert store.hit(key="k", limit=2, period_s=10, now=T + 10) == 0  # a new window


def test_a_long_poll_s_watches_are_replaced_read_and_updated(store):
    store.watches_replace(device_id=5, entries={1: "1|online|", 2: "0|offline|"}, ttl_s=60)
    store.watches_update(device_id=5, entries={1: "1|offline|x", 3: "0|online|"})
    assert store.watches_get(device_id=5, ttl_s=60) == {1: "1|offline|x", 2: "0|offline|"}
    store.watches_replace(device_id=5, entries={}, ttl_s=60)
    assert store.watches_get(device_id=5, ttl_s=60) == {}


def test_a_heartbeat_that_finds_its_entry_gone_says_so_and_registers_again(store):
    touch(store, 11, first=True)
    if isinstance(store, RedisPresenceStore):
        store.client.flushdb()
    else:
        store.__init__()
    assert touch(store, 11, at=T + 10) == Touched(True, "everyone", lost=True)
    assert store.statuses(user_ids=[1], now=T + 10)[1].online
