"""The REST side of presence in the OpenAPI document."""

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def test_the_openapi_schema_describes_presence_subscriptions_and_typing():
    r = Client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    paths = r.json()["paths"]
    assert "put" in paths["/api/v1/presence/subscriptions"]
    assert set(paths["/api/v1/typing"]["post"]["responses"]) >= {"204", "404", "429"}
