import pytest

from apps.presence import services


@pytest.fixture(autouse=True)
def _presence_fresh(settings):
    # The global fixtures flush Redis (cache.clear); this forgets the per-process gate
    # of the sweep and gives tests short, fast timings.
    services._next_sweep = 0.0
    settings.NATTER = {
        **settings.NATTER,
        "PRESENCE_GRACE_S": 0.3,
        "PRESENCE_SWEEP_S": 0.2,
    }
    yield
