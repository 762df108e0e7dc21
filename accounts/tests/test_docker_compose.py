"""No Docker engine runs here, so the compose file is checked against the settings it feeds."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

BASE_DIR = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())
SETTINGS_SOURCE = (BASE_DIR / "llmtuner" / "settings.py").read_text()
SERVICES = COMPOSE["services"]
# Read by boto3 / huggingface_hub themselves, not by settings.py.
READ_BY_LIBRARIES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN"}


def test_every_service_has_a_health_check():
    for name, service in SERVICES.items():
        if name != "create-bucket":
            assert "healthcheck" in service, name


def test_app_services_run_the_right_programs():
    assert "gunicorn llmtuner.wsgi:application" in SERVICES["web"]["command"]
    assert "migrate" in SERVICES["web"]["command"]
    assert SERVICES["worker"]["command"].startswith("celery -A llmtuner worker -Q default ")
    assert SERVICES["trainer"]["command"].startswith("celery -A llmtuner worker -Q training --concurrency 1")
    assert SERVICES["beat"]["command"].startswith("celery -A llmtuner beat")


def test_app_environment_only_names_variables_that_settings_read():
    read_by_settings = set(re.findall(r'env_\w+\(\s*"([A-Z0-9_]+)"', SETTINGS_SOURCE))
    for name in ("web", "worker", "trainer", "playground", "beat"):
        environment = SERVICES[name]["environment"]
        unknown = set(environment) - read_by_settings - READ_BY_LIBRARIES
        assert not unknown, f"{name}: {unknown}"


def test_app_environment_points_at_the_compose_services():
    environment = SERVICES["worker"]["environment"]
    postgres = SERVICES["postgres"]["environment"]
    assert environment["DATABASE_URL"] == (
        f"postgres://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}@postgres:5432/{postgres['POSTGRES_DB']}"
    )
    assert environment["CELERY_BROKER_URL"].startswith("redis://redis:6379/")
    assert environment["CACHE_URL"].startswith("redis://redis:6379/")
    assert "http://s3:5000" in environment["AWS_S3_ENDPOINT_URL"]
    assert environment["DEBUG"] == "false"
    assert environment["SECRET_KEY"].startswith("${SECRET_KEY:?")


def test_web_worker_and_beat_share_one_configuration():
    assert (
        SERVICES["web"]["environment"] == SERVICES["worker"]["environment"] == SERVICES["beat"]["environment"]
    )
    for name in ("web", "worker", "beat"):
        assert set(SERVICES[name]["depends_on"]) >= {"postgres", "redis"}
