"""Production settings: `manage.py check --deploy` is clean with the production environment."""

import os
import secrets
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def production_env(**extra) -> dict:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "SECURE_")) and key != "SECRET_KEY"
    }
    return {
        **env,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DJANGO_DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_HTTPS": "1",
        "DJANGO_ALLOWED_HOSTS": "chat.example.com",
        "DJANGO_SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto",
        **extra,
    }


def manage(*args, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_the_production_environment():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout
    assert "WARNING" not in result.stderr


def test_check_deploy_flags_the_development_defaults():
    env = production_env()
    for name in ("SECRET_KEY", "DJANGO_HTTPS"):
        del env[name]
    result = manage("check", "--deploy", env=env)
    for warning in ("security.W009", "security.W012", "security.W016", "security.W004"):
        assert warning in result.stderr, result.stderr


def test_the_production_environment_gives_secure_settings():
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_SSL_REDIRECT,"
        " s.SECURE_HSTS_SECONDS, s.SECURE_PROXY_SSL_HEADER,"
        " s.DATABASES['default'].get('CONN_HEALTH_CHECKS'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=production_env(DATABASE_URL="postgres://u@db:5432/natter"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == "True True True 31536000 ('HTTP_X_FORWARDED_PROTO', 'https') True"


@pytest.mark.django_db
def test_answers_carry_the_security_headers(settings, client):
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    response = client.get("/api/schema/", secure=True)
    assert response["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
    assert client.get("/").headers["X-Frame-Options"] == "DENY"


def test_daphne_is_at_least_4_2_2():
    # 4.2.2 carries the WebSocket frame-size and header-smuggling fixes (docs/operations.md).
    major, minor, patch = (int(p) for p in version("daphne").split(".")[:3])
    assert (major, minor, patch) >= (4, 2, 2)
