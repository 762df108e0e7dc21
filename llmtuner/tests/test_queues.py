"""Queues: each kind of work on its own, and a worker for every queue in both shapes.

Playground prompts on the shared queue once made another user's 50-row upload wait 169 s
(issue 17, item 8): the playground, dataset preparation and training never wait behind
one another.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml
from django.conf import settings

from llmtuner import broker, launch
from llmtuner.celery import app

BASE_DIR = Path(__file__).resolve().parents[2]
WORKER = ["celery", "-A", "llmtuner", "worker"]
COMPOSE_SERVICES = yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())["services"]


def queue_of(task_name: str) -> str:
    return app.amqp.router.route({}, task_name)["queue"].name


def routed_queues() -> set[str]:
    routes = settings.CELERY_TASK_ROUTES.values()
    return {settings.CELERY_TASK_DEFAULT_QUEUE} | {route["queue"] for route in routes}


def as_arguments(command: str | list[str]) -> list[str]:
    return command if isinstance(command, list) else shlex.split(command)


def queues_served(command: list[str]) -> set[str]:
    return set(command[command.index("-Q") + 1].split(","))


def assert_every_queue_served_by_a_worker_of_its_own(workers: dict[str, list[str]]) -> None:
    served = {name: queues_served(command) for name, command in workers.items()}
    assert set().union(*served.values()) == routed_queues(), served
    for name, queues in served.items():
        assert len(queues) == 1, f"{name} serves {queues}: one queue's work would wait behind another's"


def test_each_kind_of_work_goes_to_its_own_queue():
    assert queue_of("jobs.tasks.run_playground") == "playground"
    assert queue_of("jobs.tasks.run_local_job") == "training"
    assert queue_of("datasets_app.tasks.prepare_dataset") == "datasets"


def test_the_broker_module_knows_every_queue_we_route_to():
    # A reaper reads these queues to tell a task on its way from one the broker lost.
    assert set(broker.QUEUES) == routed_queues()


def test_make_run_starts_a_worker_for_every_queue():
    processes = launch.commands("127.0.0.1", "8000")
    workers = {name: command for name, command in processes.items() if "worker" in command}

    assert_every_queue_served_by_a_worker_of_its_own(workers)


def test_the_production_shape_has_a_worker_for_every_queue():
    commands = {name: as_arguments(service.get("command", "")) for name, service in COMPOSE_SERVICES.items()}
    workers = {name: command for name, command in commands.items() if command[:4] == WORKER}

    assert_every_queue_served_by_a_worker_of_its_own(workers)
    assert COMPOSE_SERVICES["playground"]["environment"] == COMPOSE_SERVICES["worker"]["environment"]
