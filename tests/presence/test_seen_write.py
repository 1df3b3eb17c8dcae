"""Writing last-seen times for many devices and users at once (a sweep's batch)."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.accounts.models import Device, User
from apps.presence.services import iso, presence_seen_write

pytestmark = pytest.mark.django_db


def test_a_batch_of_last_seen_times_is_two_statements_and_never_moves_back(people):
    users = [people.user() for _ in range(5)]
    devices = [people.device(u) for u in users]
    presence_seen_write(
        devices={devices[0].id: "2026-11-28T10:00:00.000000Z"},
        users={users[0].id: "2026-11-28T10:00:00.000000Z"},
    )
    later, earlier = "2026-11-28T11:00:00.000000Z", "2026-11-28T09:00:00.000000Z"
    with CaptureQueriesContext(connection) as queries:
        presence_seen_write(
            devices={devices[0].id: earlier, **{d.id: later for d in devices[1:]}},
            users={users[0].id: earlier, **{u.id: later for u in users[1:]}},
        )
    assert len(queries) == 2
    seen = dict(
        Device.objects.filter(id__in=[d.id for d in devices]).values_list("id", "last_active_at")
    )
    assert iso(seen[devices[0].id]) == "2026-11-28T10:00:00.000000Z"  # not moved back
    assert {iso(seen[d.id]) for d in devices[1:]} == {later}
    last = dict(User.objects.filter(id__in=[u.id for u in users]).values_list("id", "last_seen"))
    assert iso(last[users[0].id]) == "2026-11-28T10:00:00.000000Z"
    assert {iso(last[u.id]) for u in users[1:]} == {later}
