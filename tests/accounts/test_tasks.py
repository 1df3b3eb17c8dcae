from datetime import timedelta

import pytest
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.utils import timezone

from apps.accounts.tasks import sessions_clear_task

pytestmark = pytest.mark.django_db


def test_expired_browser_sessions_are_cleared_by_the_beat_task():
    live, stale = SessionStore(), SessionStore()
    live.create()
    stale.create()
    Session.objects.filter(session_key=stale.session_key).update(
        expire_date=timezone.now() - timedelta(days=1)
    )
    assert sessions_clear_task() == 1
    assert list(Session.objects.values_list("session_key", flat=True)) == [live.session_key]
