"""The import boundaries of DESIGN.md: each outside service has one door, and the arrows go one way.

The source is read with `ast`, so an import inside a function counts as much as one at the top.
Tests are left out everywhere: they test the whole site and stub the services. Benchmarks are
left out where they drive a door directly (boto3, torch), not where they could enqueue.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BASE_DIR = Path(__file__).resolve().parents[2]

AWS_LIBRARIES = {"boto3", "botocore", "sagemaker"}
# jobs/backends/sagemaker is one file before its split into a package and a package after it.
AWS_DOORS = ("llmtuner.storage", "jobs.backends.sagemaker")
ML_LIBRARIES = {"torch", "transformers", "peft", "accelerate"}
ML_DOORS = ("training_scripts", "jobs.playground.generation")
ENQUEUE_CALLS = {"delay", "delay_on_commit", "apply_async", "send_task"}
BROKER = "llmtuner.broker"
WEB_FORBIDDEN = ML_LIBRARIES | {"sagemaker"}


@dataclass(frozen=True, order=True)
class Found:
    where: str  # path:line
    what: str

    def __str__(self) -> str:
        return f"  {self.where} {self.what}"


def source_files(*, with_bench: bool) -> Iterator[Path]:
    """Every Python file of the project, tests (and, unless asked, benchmarks) left out."""
    for folder, subfolders, files in os.walk(BASE_DIR):
        subfolders[:] = sorted(name for name in subfolders if not _left_out(Path(folder, name), with_bench))
        for name in sorted(files):
            if name.endswith(".py") and not name.startswith("test_") and name != "conftest.py":
                yield Path(folder, name)


def _left_out(folder: Path, with_bench: bool) -> bool:
    if folder.name.startswith(".") or folder.name in {"__pycache__", "node_modules", "tests"}:
        return True
    if folder == BASE_DIR / "bench" and not with_bench:
        return True
    return (folder / "pyvenv.cfg").exists()  # a virtual environment: other people's code


def module_name(path: Path) -> str:
    parts = list(path.relative_to(BASE_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def relative(path: Path) -> str:
    return path.relative_to(BASE_DIR).as_posix()


def is_within(module: str, packages: Iterable[str]) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


def nodes(path: Path) -> list[ast.AST]:
    """The file's statements and expressions, in the order they are written."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return sorted((node for node in ast.walk(tree) if hasattr(node, "lineno")), key=lambda node: node.lineno)


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for each absolute import in the file, `importlib.import_module("x")` included.

    Relative imports stay inside their own package, so no boundary here can be crossed by one.
    """
    for node in nodes(path):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
        elif (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) in ("import_module", "importlib.import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def imports_of(libraries: set[str], files: Iterable[Path], *, except_in: Iterable[str] = ()) -> list[Found]:
    """Where files outside the `except_in` packages import any of `libraries` (or a submodule)."""
    found = []
    for path in files:
        if is_within(module_name(path), except_in):
            continue
        for line, module in imports(path):
            if module.partition(".")[0] in libraries:
                found.append(Found(f"{relative(path)}:{line}", f"imports {module}"))
    return found


def report(problem: str, found: list[Found]) -> str:
    return "\n".join([problem, *map(str, found)])


@pytest.mark.parametrize(
    ("libraries", "doors", "problem"),
    [
        pytest.param(
            AWS_LIBRARIES,
            AWS_DOORS,
            "boto3, botocore and the SageMaker SDK belong to llmtuner/storage.py and "
            "jobs/backends/sagemaker/; call those instead:",
            id="aws",
        ),
        pytest.param(
            ML_LIBRARIES,
            ML_DOORS,
            "torch, transformers, peft and accelerate belong to training_scripts/ and the playground's "
            "generation module:",
            id="torch",
        ),
    ],
)
def test_only_its_door_imports_an_outside_library(libraries, doors, problem):
    found = imports_of(libraries, source_files(with_bench=False), except_in=doors)

    assert not found, report(problem, found)


def test_accounts_imports_neither_jobs_nor_datasets():
    accounts = (path for path in source_files(with_bench=False) if is_within(module_name(path), ["accounts"]))

    found = imports_of({"jobs", "datasets_app"}, accounts)

    assert not found, report(
        "accounts is below jobs and datasets_app; what shows their data lives with them:", found
    )


def test_every_enqueue_goes_through_the_broker_module():
    found = []
    for path in source_files(with_bench=True):
        if module_name(path) == BROKER:
            continue
        for node in nodes(path):
            if isinstance(node, ast.Call) and _called_name(node.func) in ENQUEUE_CALLS:
                found.append(Found(f"{relative(path)}:{node.lineno}", f"calls {ast.unparse(node.func)}()"))

    assert not found, report(
        "tasks are sent with llmtuner.broker.send_on_commit (after commit, never raising on an outage):",
        found,
    )


def _called_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


# Run in a fresh interpreter: the web process's imports, and for each forbidden library the
# project line that first imported it.
WEB_PROCESS = textwrap.dedent(
    """
    import importlib, json, os, sys, traceback

    FORBIDDEN = set(json.loads(sys.argv[1]))
    HERE = os.getcwd()
    first_imported_at = {}


    class Recorder:
        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top in FORBIDDEN and top not in first_imported_at:
                stack = traceback.extract_stack()[:-1]
                ours = [f for f in stack if f.filename.startswith(HERE) and "-packages" not in f.filename]
                frame = (ours or stack)[-1]
                first_imported_at[top] = f"{os.path.relpath(frame.filename)}:{frame.lineno}"
            return None  # only watching: the import goes on as usual


    sys.meta_path.insert(0, Recorder())

    import django

    django.setup()

    from django.contrib import admin
    from django.urls import URLResolver, get_resolver

    from llmtuner.celery import app

    admin.autodiscover()
    app.loader.import_default_modules()  # the task modules, as Celery loads them to send a task


    def load_views(patterns):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                load_views(pattern.url_patterns)
            else:
                importlib.import_module(pattern.callback.__module__)


    resolver = get_resolver()
    load_views(resolver.url_patterns)
    for status in (400, 403, 404, 500):
        importlib.import_module(resolver.resolve_error_handler(status).__module__)
    print(json.dumps({name: first_imported_at.get(name, "?") for name in FORBIDDEN if name in sys.modules}))
    """
)


def test_the_web_process_imports_no_torch_transformers_or_sagemaker():
    result = subprocess.run(
        [sys.executable, "-c", WEB_PROCESS, json.dumps(sorted(WEB_FORBIDDEN))],
        cwd=BASE_DIR,
        env={"DJANGO_SETTINGS_MODULE": "llmtuner.settings", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    found = sorted(Found(where, f"imports {name} first") for name, where in loaded.items())
    assert not loaded, report(
        "the web process (URLconf, every view module, the admin, the task modules) loads:", found
    )
