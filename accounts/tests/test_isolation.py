"""Isolation, proven for every URL of our apps rather than for the ones someone remembered.

The URL configuration is walked (`get_resolver()`, recursively). Every pattern of our apps
(accounts, datasets, jobs, the playground, and the project's own top-level ones) is checked:

- a pattern that takes an object id is requested by an outsider, with GET and with POST, on
  objects that really exist and belong to someone else: it must answer exactly as it does for
  an id that does not exist (404, or 405 for a method the view never accepts), change nothing,
  and answer the owner with something other than 404 (so the object was the right one);
- anonymous visitors are sent to the login page from every URL that is not public.

A new id-taking URL whose keyword argument this file does not know how to fill fails the test
by name, so a view added later is covered without anyone remembering to add it here.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from urllib.parse import urlparse

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from datasets_app.models import Dataset
from jobs.models import JobStatus, PlaygroundRun, PlaygroundStatus, TrainingJob
from jobs.tests.conftest import make_job, make_ready_dataset
from llmtuner import storage

# URL configuration modules that are ours; allauth's and the admin's have their own tests.
OUR_URLCONFS = ("accounts.urls", "datasets_app.urls", "jobs.urls")
# Patterns of ours that anyone may open without logging in.
PUBLIC = {"health", "home"}  # home: the landing page for visitors
MISSING_ID = 987_654_321


@dataclass(frozen=True)
class Route:
    name: str  # namespaced, for reverse()
    namespace: str
    kwargs: tuple[tuple[str, str], ...]  # (argument, converter class name)

    @property
    def takes_an_id(self) -> bool:
        return any(converter == "IdConverter" for _, converter in self.kwargs)

    def __str__(self) -> str:
        return self.name


def _walk(patterns, namespace: str = "", ours: bool = True):
    for entry in patterns:
        if isinstance(entry, URLResolver):
            conf = entry.urlconf_name
            module = conf if isinstance(conf, str) else getattr(conf, "__name__", "")
            inner = f"{namespace}:{entry.namespace}".strip(":") if entry.namespace else namespace
            yield from _walk(entry.url_patterns, inner, module in OUR_URLCONFS)
        elif isinstance(entry, URLPattern) and ours:
            if not entry.name:
                raise AssertionError(f"URL pattern {entry.pattern} has no name: name it so it can be tested")
            converters = getattr(entry.pattern, "converters", {})
            yield Route(
                name=f"{namespace}:{entry.name}" if namespace else entry.name,
                namespace=namespace,
                kwargs=tuple((arg, type(conv).__name__) for arg, conv in converters.items()),
            )


def our_routes() -> list[Route]:
    root = get_resolver()
    # The project's own top-level patterns (health) are ours too.
    return list(_walk(root.url_patterns, ours=True))


ROUTES = our_routes()
ID_ROUTES = [route for route in ROUTES if route.takes_an_id]
PLAIN_ROUTES = [route for route in ROUTES if not route.kwargs]


# --- Someone else's objects, one per kind of keyword argument ---------------------------------


def _make_objects(owner) -> dict:
    dataset = make_ready_dataset(owner)
    job = make_job(owner, dataset, status=JobStatus.COMPLETED)
    prefix = f"{job.storage_prefix()}/model"
    storage.save(f"{prefix}/config.json", io.BytesIO(b"{}"))
    log_key = storage.save(f"{job.storage_prefix()}/logs/train.log", io.BytesIO(b"step 1\n"))
    TrainingJob.objects.filter(pk=job.pk).update(model_prefix=prefix, log_key=log_key)
    job.refresh_from_db()
    run = PlaygroundRun.objects.create(
        job=job, prompt="Hello", max_new_tokens=8, temperature=0, top_p=1, status=PlaygroundStatus.DONE
    )
    return {"dataset": dataset, "job": job, "run": run}


# (namespace, keyword argument) -> the value that names the owner's object.
FILLERS = {
    ("datasets", "pk"): lambda objects: objects["dataset"].pk,
    ("datasets", "split"): lambda objects: "train",
    ("jobs", "pk"): lambda objects: objects["job"].pk,
    ("jobs", "run_pk"): lambda objects: objects["run"].pk,
}


def fill(route: Route, objects: dict, missing: bool = False) -> str:
    kwargs = {}
    for argument, converter in route.kwargs:
        filler = FILLERS.get((route.namespace, argument))
        if filler is None:
            pytest.fail(
                f"{route} takes <{argument}> and this test does not know which object that names: "
                f"add ({route.namespace!r}, {argument!r}) to FILLERS in {__name__}"
            )
        kwargs[argument] = MISSING_ID if (missing and converter == "IdConverter") else filler(objects)
    return reverse(route.name, kwargs=kwargs)


def snapshot(objects: dict) -> dict:
    """What an outsider must not be able to change."""
    dataset = Dataset.objects.filter(pk=objects["dataset"].pk).values("name", "status", "train_file").first()
    job = TrainingJob.objects.filter(pk=objects["job"].pk).values("name", "status", "model_prefix").first()
    run = PlaygroundRun.objects.filter(pk=objects["run"].pk).values("status").first()
    return {
        "dataset": dataset,
        "job": job,
        "run": run,
        "jobs": TrainingJob.objects.count(),
        "datasets": Dataset.objects.count(),
        "runs": PlaygroundRun.objects.count(),
        "model": storage.list_keys(objects["job"].model_prefix + "/"),
        "files": storage.list_keys(objects["dataset"].storage_prefix),
    }


def _client(user=None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


# --- The tests ----------------------------------------------------------------------------------


def test_the_walk_finds_the_urls_of_every_app():
    names = {route.name for route in ROUTES}
    # If one of these is renamed or removed, the walk (not the app) is what needs a look.
    assert {"dashboard", "datasets:detail", "jobs:detail", "jobs:playground_run", "health"} <= names
    assert len(ID_ROUTES) >= 15, [str(r) for r in ID_ROUTES]


@pytest.mark.django_db
@pytest.mark.parametrize("route", ID_ROUTES, ids=str)
def test_someone_elses_object_is_404_for_every_method_and_changes_nothing(route, owner, outsider):
    objects = _make_objects(owner)
    url, missing_url = fill(route, objects), fill(route, objects, missing=True)
    before = snapshot(objects)
    intruder = _client(outsider)
    accepted = []
    for method in ("get", "post"):
        answer = getattr(intruder, method)(url, HTTP_HX_REQUEST="true" if method == "post" else "")
        plain = getattr(intruder, method)(url)
        nothing = getattr(intruder, method)(missing_url)
        # Indistinguishable from an id that does not exist: no hint that the object is there.
        assert answer.status_code == plain.status_code == nothing.status_code, (method, url)
        assert nothing.status_code in (404, 405), (method, url, nothing.status_code)
        if nothing.status_code == 404:
            accepted.append(method)
    assert accepted, f"{route} answers 405 to both GET and POST"
    assert snapshot(objects) == before, f"an outsider changed something through {route}"

    # The object was the right one: its owner gets past the 404.
    method = "get" if "get" in accepted else "post"
    response = getattr(_client(owner), method)(url)
    assert response.status_code != 404, f"{route}: the owner gets 404 too, so the test proves nothing"


@pytest.mark.django_db
@pytest.mark.parametrize("route", [r for r in ROUTES if r.name not in PUBLIC], ids=str)
def test_anonymous_visitors_are_sent_to_log_in(route, owner):
    objects = _make_objects(owner) if route.kwargs else {}
    url = fill(route, objects) if route.kwargs else reverse(route.name)
    before = snapshot(objects) if objects else None
    for method in ("get", "post"):
        response = getattr(Client(), method)(url)
        assert response.status_code == 302, (method, url, response.status_code)
        location = urlparse(response["Location"])
        assert location.path == reverse("account_login"), (method, url, response["Location"])
    if objects:
        assert snapshot(objects) == before


@pytest.mark.django_db
def test_public_urls_open_without_a_login(client):
    for name in PUBLIC:
        assert client.get(reverse(name)).status_code in (200, 503), name
    for path in ("/accounts/login/", "/accounts/signup/", "/accounts/password/reset/"):
        assert client.get(path).status_code == 200, path


def test_an_id_url_this_file_cannot_fill_fails_loudly():
    newcomer = Route(name="jobs:detail", namespace="jobs", kwargs=(("checkpoint_pk", "IdConverter"),))
    with pytest.raises(pytest.fail.Exception, match="add \\('jobs', 'checkpoint_pk'\\) to FILLERS"):
        fill(newcomer, {})
