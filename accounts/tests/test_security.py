"""Security properties of the whole product: CSP, cookies, CSRF on every POST, secrets kept out of
what we store and show, no shell, static analysis, rate limits.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.urls.exceptions import NoReverseMatch

from accounts.tests.test_isolation import FILLERS, _make_objects

# `check --deploy` with the production settings: accounts/tests/test_settings.py.
from accounts.tests.test_settings import PRODUCTION_ENV
from conftest import PASSWORD, make_user
from jobs.backends import local
from jobs.models import JobStatus, LogLine, TrainingJob
from jobs.tests.conftest import make_job, make_ready_dataset
from llmtuner import storage

BASE_DIR = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("accounts", "datasets_app", "jobs", "llmtuner", "training_scripts", "bench")


# --- Content-Security-Policy -------------------------------------------------------------------


def _directives(header: str) -> dict[str, list[str]]:
    parts = [part.strip().split() for part in header.split(";") if part.strip()]
    return {part[0]: part[1:] for part in parts}


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/accounts/login/", "/dashboard/", "/datasets/", "/jobs/", "/jobs/new/"])
def test_every_page_carries_a_policy_without_inline_script_or_eval(path, owner):
    client = Client()
    if not path.startswith("/accounts/"):
        client.force_login(owner)
    response = client.get(path)

    assert response.status_code == 200
    policy = _directives(response["Content-Security-Policy"])
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]  # no <style> elements: htmx's indicator style is off
    assert policy["object-src"] == ["'none'"] and policy["frame-ancestors"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"] and policy["form-action"][0] == "'self'"
    assert "'unsafe-eval'" not in response["Content-Security-Policy"]
    assert "'unsafe-inline'" not in " ".join(
        policy["script-src"] + policy["style-src"] + policy["default-src"]
    )
    page = response.content.decode()
    config = re.search(r"<meta name=\"htmx-config\" content='([^']*)'>", page)
    assert config and json.loads(config.group(1)) == {"includeIndicatorStyles": False, "allowEval": False}
    assert page.index('name="htmx-config"') < page.index("htmx-2.min.js")


def test_google_sign_in_may_be_posted_to_google_when_configured(settings):
    from llmtuner.csp import policy

    settings.GOOGLE_CLIENT_ID = ""
    assert _directives(policy())["form-action"] == ["'self'"]
    settings.GOOGLE_CLIENT_ID = "client-id.apps.googleusercontent.com"
    assert _directives(policy())["form-action"] == ["'self'", "https://accounts.google.com"]


def _template_files() -> list[Path]:
    roots = [BASE_DIR / "templates", *(BASE_DIR / app / "templates" for app in SOURCE_DIRS)]
    return sorted(path for root in roots if root.is_dir() for path in root.rglob("*.html"))


def test_templates_hold_no_inline_script_handler_or_eval_attribute():
    inline_script = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*application/(ld\+)?json)[^>]*>", re.I)
    handler = re.compile(r"\s(on[a-z]+|hx-on[:\w-]*)\s*=", re.I)
    problems = []
    for path in _template_files():
        text = path.read_text()
        for pattern, what in (
            (inline_script, "an inline <script>"),
            (handler, "an event-handler attribute"),
            (re.compile(r"<style[\s>]", re.I), "a <style> element"),
            (re.compile(r"javascript:", re.I), "a javascript: URL"),
            (re.compile(r"hx-(vals|headers|vars)=['\"]\s*(js|javascript):", re.I), "an evaluated hx- value"),
        ):
            for match in pattern.finditer(text):
                problems.append(f"{path.relative_to(BASE_DIR)}: {what}: {match.group(0)!r}")
    assert problems == []
    assert len(_template_files()) >= 10


def test_our_scripts_use_no_eval():
    scripts = [p for d in SOURCE_DIRS for p in (BASE_DIR / d).rglob("*.js")] + list(
        (BASE_DIR / "static").rglob("*.js")
    )
    assert scripts
    for path in scripts:
        text = path.read_text()
        assert not re.search(r"\beval\s*\(|new\s+Function\s*\(|setTimeout\(\s*['\"`]", text), path
        assert ".innerHTML" not in text and "insertAdjacentHTML" not in text, path


# --- Production cookies and headers ------------------------------------------------------------


def test_production_cookies_are_secure_and_http_only():
    code = (
        "import django, json; django.setup(); from django.conf import settings as s;"
        "print(json.dumps({n: getattr(s, n, None) for n in ("
        "'SESSION_COOKIE_SECURE','CSRF_COOKIE_SECURE','SESSION_COOKIE_HTTPONLY','SESSION_COOKIE_SAMESITE',"
        "'CSRF_COOKIE_SAMESITE','SECURE_SSL_REDIRECT','SECURE_HSTS_SECONDS','SECURE_PROXY_SSL_HEADER',"
        "'X_FRAME_OPTIONS','SECURE_CONTENT_TYPE_NOSNIFF','DEBUG')}))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "HTTPS")}
    env.update(PRODUCTION_ENV, DJANGO_SETTINGS_MODULE="llmtuner.settings")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout.strip().splitlines()[-1])
    assert values == {
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "CSRF_COOKIE_SAMESITE": "Lax",
        "SECURE_SSL_REDIRECT": True,
        "SECURE_HSTS_SECONDS": 31536000,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "X_FRAME_OPTIONS": "DENY",
        "SECURE_CONTENT_TYPE_NOSNIFF": True,
        "DEBUG": False,
    }


def test_production_sends_secure_cookies_on_a_real_login(tmp_path):
    """The settings above, as a browser sees them: Set-Cookie flags on a login over HTTPS."""
    code = textwrap.dedent(
        f"""
        import django, json
        django.setup()
        from django.core.management import call_command
        from django.test import Client
        from django.test.utils import setup_test_environment
        from django.conf import settings
        settings.STORAGES = {{
            **settings.STORAGES,
            "staticfiles": {{"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}},
        }}
        setup_test_environment()
        call_command("migrate", verbosity=0, interactive=False)
        from conftest import make_user
        make_user("alice@example.com")
        client = Client(HTTP_X_FORWARDED_PROTO="https", HTTP_HOST="tuner.example.com")
        client.get("/accounts/login/", secure=True)
        response = client.post(
            "/accounts/login/", {{"login": "alice@example.com", "password": {PASSWORD!r}}}, secure=True
        )
        print(json.dumps({{"status": response.status_code, "cookies": {{
            name: {{"secure": bool(m["secure"]), "httponly": bool(m["httponly"]), "samesite": m["samesite"]}}
            for name, m in client.cookies.items()}}}}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "HTTPS")}
    env.update(
        PRODUCTION_ENV,
        DJANGO_SETTINGS_MODULE="llmtuner.settings",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        CACHE_URL="locmem://",
        ACCOUNT_EMAIL_VERIFICATION="none",
        LLMTUNER_VAR_DIR=str(tmp_path),
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["status"] == 302, outcome
    assert outcome["cookies"]["sessionid"] == {"secure": True, "httponly": True, "samesite": "Lax"}
    assert outcome["cookies"]["csrftoken"]["secure"] is True


# --- CSRF on every POST ----------------------------------------------------------------------------


def _every_route(patterns=None, namespace=""):
    for entry in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(entry, URLResolver):
            inner = f"{namespace}:{entry.namespace}".strip(":") if entry.namespace else namespace
            yield from _every_route(entry.url_patterns, inner)
        elif isinstance(entry, URLPattern) and entry.name:
            yield namespace, entry


def _url_for(namespace: str, pattern: URLPattern, objects: dict, user) -> str | None:
    name = f"{namespace}:{pattern.name}" if namespace else pattern.name
    converters = getattr(pattern.pattern, "converters", None)
    if converters is None:  # a regex pattern (the admin's): its named groups
        arguments = dict.fromkeys(pattern.pattern.regex.groupindex)
    else:
        arguments = {key: type(converter).__name__ for key, converter in converters.items()}
    kwargs = {}
    for argument, converter in arguments.items():
        filler = FILLERS.get((namespace, argument))
        if filler is not None:
            kwargs[argument] = filler(objects)
        elif argument == "app_label":
            kwargs[argument] = "jobs"
        elif argument in ("object_id", "id", "pk", "user_id"):
            kwargs[argument] = str(user.pk)
        elif converter == "IdConverter":
            kwargs[argument] = 1
        else:
            kwargs[argument] = "x1-set-password"
    try:
        return reverse(name, kwargs=kwargs)
    except NoReverseMatch:
        return None


# Google posts its sign-in credential here itself (Google One Tap): allauth exempts the view from
# Django's CSRF check and checks Google's own double-submit token (g_csrf_token) instead.
CSRF_CHECKED_OTHERWISE = {"/accounts/google/login/token/"}


@pytest.mark.django_db
def test_every_post_without_a_csrf_token_is_refused_htmx_included(staff, settings):
    # With Google configured, so that its URLs are live too.
    settings.GOOGLE_CLIENT_ID = "client-id.apps.googleusercontent.com"
    settings.SOCIALACCOUNT_PROVIDERS = {
        "google": {
            **settings.SOCIALACCOUNT_PROVIDERS["google"],
            "APPS": [{"client_id": settings.GOOGLE_CLIENT_ID, "secret": "s3cr3t", "key": ""}],
        }
    }
    objects = _make_objects(staff)
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    anonymous = Client(enforce_csrf_checks=True)
    tried, skipped = [], []
    jobs_before = TrainingJob.objects.count()
    for namespace, pattern in _every_route():
        url = _url_for(namespace, pattern, objects, staff)
        if url is None:
            skipped.append(pattern.name)
            continue
        for who, visitor in (("staff", client), ("anonymous", anonymous)):
            for headers in ({}, {"HX-Request": "true"}):
                response = visitor.post(url, {"name": "changed", "email": "x@example.com"}, headers=headers)
                if url in CSRF_CHECKED_OTHERWISE:
                    assert response.status_code in (400, 401, 403), (who, url, response.status_code)
                elif who == "anonymous" and response.status_code == 302:
                    # A view that checks CSRF itself (the streamed upload) sends visitors to log in first.
                    assert response["Location"].startswith("/accounts/login/"), url
                else:
                    assert response.status_code == 403, (who, url, headers, response.status_code)
        tried.append(url)
    # Ours and allauth's all reverse; only a few of the admin's regex patterns may not.
    assert {"/datasets/upload/", "/jobs/new/", "/accounts/login/", "/accounts/signup/"} <= set(tried)
    assert set(tried) >= CSRF_CHECKED_OTHERWISE
    assert f"/jobs/{objects['job'].pk}/playground/" in tried
    assert len(tried) >= 60, len(tried)
    assert len(skipped) <= 5, skipped
    assert TrainingJob.objects.count() == jobs_before


# --- Secrets --------------------------------------------------------------------------------------

SECRETS = {
    "HF_TOKEN": "hf_SeCrEtTokenMarker0123456789abcd",
    "AWS_ACCESS_KEY_ID": "AKIASECRETMARKER0042",
    "AWS_SECRET_ACCESS_KEY": "aws/SeCrEt+AccessKeyMarker0123456789",
    "SECRET_KEY": "django-SeCrEt-key-marker-that-is-long-enough-0123456789",
}


@pytest.fixture
def secrets_everywhere(monkeypatch, settings):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    settings.SECRET_KEY = SECRETS["SECRET_KEY"]
    return SECRETS


def _everything_a_job_left(client, job: TrainingJob) -> dict[str, str]:
    job.refresh_from_db()
    texts = {
        "status_message": job.status_message,
        "hyperparameters": json.dumps(job.hyperparameters),
        "metrics": json.dumps(job.metrics),
        "log lines": "\n".join(LogLine.objects.filter(job=job).values_list("text", flat=True)),
    }
    if job.log_key:
        with storage.open_stream(job.log_key) as stream:
            texts["stored log"] = stream.read().decode("utf-8", "replace")
    for key in storage.list_keys(job.storage_prefix() + "/"):
        if key.endswith((".json", ".txt", ".log", ".md")):
            with storage.open_stream(key) as stream:
                texts[key] = stream.read().decode("utf-8", "replace")
    for path in ("", "progress/", "logs/?after=0", "metrics/?after=0", "playground/"):
        response = client.get(f"/jobs/{job.pk}/{path}")
        assert response.status_code in (200, 286), (path, response.status_code)  # a page, not a 404
        texts[f"page {path or 'detail'}"] = response.content.decode()
    texts["list page"] = client.get("/jobs/").content.decode()
    return texts


def _leaks(texts: dict[str, str]) -> list[str]:
    return [
        f"{name} holds {which}" for name, text in texts.items() for which, v in SECRETS.items() if v in text
    ]


@pytest.mark.slow
@pytest.mark.django_db
def test_a_real_local_job_leaves_no_secret_in_its_logs_hyperparameters_files_or_pages(
    secrets_everywhere, owner, owner_client, caplog
):
    job = make_job(owner)

    with caplog.at_level("DEBUG"):
        local.run_job(job.pk)

    texts = _everything_a_job_left(owner_client, job)
    assert job.status == JobStatus.COMPLETED, job.status_message
    assert texts["log lines"] and texts["stored log"]
    texts["server log"] = caplog.text
    assert _leaks(texts) == []


LEAKY_SCRIPT = """
import json, os, sys
token = os.environ.get("HF_TOKEN", "missing")
print("Downloading https://huggingface.co/api/models?token=" + token, file=sys.stderr)
print(json.dumps({"event": "start", "total_steps": 1}), flush=True)
print("Traceback: HTTPError 401 for Authorization: Bearer " + token, file=sys.stderr)
print(json.dumps({"event": "error", "message": "login failed with " + token}), flush=True)
print("AWS " + os.environ.get("AWS_SECRET_ACCESS_KEY", "not passed") + os.environ.get("SECRET_KEY", "-"))
sys.exit(1)
"""


@pytest.mark.django_db
def test_a_script_that_prints_its_token_has_it_masked_in_every_trace(
    secrets_everywhere, owner, owner_client, tmp_path, monkeypatch
):
    script = tmp_path / "leaky.py"
    script.write_text(LEAKY_SCRIPT)
    monkeypatch.setattr(local, "SCRIPT", script)
    job = make_job(owner)

    local.run_job(job.pk)

    texts = _everything_a_job_left(owner_client, job)
    assert job.status == JobStatus.FAILED
    assert job.status_message == "login failed with ***"
    assert "Bearer ***" in texts["log lines"] and "Bearer ***" in texts["stored log"]
    # The script never even sees the AWS keys or Django's secret.
    assert "AWS not passed-" in texts["log lines"]
    assert _leaks(texts) == []


@pytest.mark.django_db
def test_no_page_of_ours_shows_a_secret(secrets_everywhere, owner, owner_client, staff):
    make_ready_dataset(owner)
    make_job(owner)
    pages = [
        "/dashboard/",
        "/settings/",
        "/datasets/",
        "/jobs/",
        "/jobs/new/",
        "/health/",
        "/accounts/login/",
    ]
    texts = {path: owner_client.get(path).content.decode() for path in pages}
    admin = Client()
    admin.force_login(staff)
    texts["/admin/"] = admin.get("/admin/").content.decode()
    assert _leaks(texts) == []


# --- No shell, anywhere --------------------------------------------------------------------------

SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output"}
SHELL_CALLS = {
    ("os", "system"),
    ("os", "popen"),
    ("subprocess", "getoutput"),
    ("subprocess", "getstatusoutput"),
}


def _python_files() -> list[Path]:
    files = [BASE_DIR / "manage.py", BASE_DIR / "conftest.py"]
    for folder in SOURCE_DIRS:
        files += [p for p in (BASE_DIR / folder).rglob("*.py") if "migrations" not in p.parts]
    return files


def test_no_subprocess_runs_through_a_shell_and_every_command_is_a_list():
    problems = []
    calls = 0
    for path in _python_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            where = f"{path.relative_to(BASE_DIR)}:{node.lineno}"
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
            if (owner, name) in SHELL_CALLS or name == "create_subprocess_shell":
                problems.append(f"{where}: {owner}.{name} runs a shell")
            for keyword in node.keywords:
                if keyword.arg == "shell" and not (
                    isinstance(keyword.value, ast.Constant) and keyword.value.value is False
                ):
                    problems.append(f"{where}: shell={ast.unparse(keyword.value)}")
            if owner == "subprocess" and name in SUBPROCESS_CALLS:
                calls += 1
                command = node.args[0] if node.args else None
                if isinstance(command, ast.Constant | ast.JoinedStr | ast.BinOp):
                    problems.append(f"{where}: the command is a string, not a list: {ast.unparse(command)}")
    assert problems == []
    assert calls >= 5  # the scan does see our subprocess calls


def test_hyperparameters_become_separate_arguments_never_a_command_line():
    hostile = {"base_model": "gpt2; rm -rf / #", "lr_scheduler": "$(reboot)", "epochs": 1.0}
    arguments = local.script_arguments(hostile)
    assert arguments == [
        "--base_model", '"gpt2; rm -rf / #"', "--lr_scheduler", '"$(reboot)"', "--epochs", "1.0",
    ]  # fmt: skip


# --- Static analysis ----------------------------------------------------------------------------------


def test_bandit_finds_nothing_of_medium_or_high_severity():
    bandit = Path(sys.executable).with_name("bandit")
    if not bandit.exists():
        pytest.fail("bandit is not installed: pip install -r requirements-dev.txt")
    result = subprocess.run(
        [str(bandit), "-c", "pyproject.toml", "-r", *SOURCE_DIRS, "manage.py", "-ll", "-f", "json", "-q"],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(result.stdout)
    findings = [
        f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_severity']}: {r['issue_text']}"
        for r in report["results"]
    ]
    assert findings == []
    assert report["metrics"]["_totals"]["loc"] > 5000  # it did read our code


# --- allauth's rate limits ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_signups_from_one_address_are_rate_limited(client, settings):
    limit = int(settings.ACCOUNT_RATE_LIMITS["signup"].split("/")[0])
    for number in range(limit):
        response = client.post(
            "/accounts/signup/",
            {"email": f"bot{number}@example.com", "password1": PASSWORD, "password2": PASSWORD},
        )
        assert response.status_code == 302, number
        client.logout()

    response = client.post(
        "/accounts/signup/", {"email": "one-more@example.com", "password1": PASSWORD, "password2": PASSWORD}
    )

    assert response.status_code == 429
    assert not TrainingJob.objects.exists()
    from django.contrib.auth import get_user_model

    assert not get_user_model().objects.filter(email="one-more@example.com").exists()


@pytest.mark.django_db
def test_password_resets_for_one_email_are_rate_limited(client, owner, mailoutbox, settings):
    per_key = int(settings.ACCOUNT_RATE_LIMITS["reset_password"].split(",")[1].split("/")[0])
    for _ in range(per_key):
        response = client.post("/accounts/password/reset/", {"email": owner.email})
        assert response.status_code == 302
    sent = len(mailoutbox)

    response = client.post("/accounts/password/reset/", {"email": owner.email})

    assert response.status_code in (200, 429)
    assert "Too many" in response.content.decode() or response.status_code == 429
    assert len(mailoutbox) == sent


@pytest.mark.django_db
def test_password_resets_from_one_address_are_rate_limited(client, settings, mailoutbox):
    per_ip = int(settings.ACCOUNT_RATE_LIMITS["reset_password"].split(",")[0].split("/")[0])
    users = [make_user(f"user{n}@example.com") for n in range(per_ip + 1)]
    for user in users[:per_ip]:
        assert client.post("/accounts/password/reset/", {"email": user.email}).status_code == 302
    sent = len(mailoutbox)

    response = client.post("/accounts/password/reset/", {"email": users[-1].email})

    assert response.status_code == 429
    assert len(mailoutbox) == sent
