"""`make run`: web, workers and beat of the embedded default in one terminal.

Ctrl-C (or SIGTERM) stops them all; if any one of them exits, the others are
stopped too, so nothing is left running half-alive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

GRACE_SECONDS = 10


def commands(host: str, port: str) -> dict[str, list[str]]:
    """What `make run` starts: the web server, a worker for each queue, and beat."""
    python = sys.executable
    return {
        "web": [python, "manage.py", "runserver", "--noreload", f"{host}:{port}"],
        "worker": [python, "-m", "celery", "-A", "llmtuner", "worker", "-Q", "default",
                   "--concurrency", "2", "-n", "default@%h", "-l", "INFO"],
        # One training at a time: two trainings on the same CPUs slow each other down many times over.
        "trainer": [python, "-m", "celery", "-A", "llmtuner", "worker", "-Q", "training",
                    "--concurrency", "1", "-n", "training@%h", "-l", "INFO"],
        # One prompt at a time: each process keeps its own models loaded (PLAYGROUND_CACHE_MODELS).
        "playground": [python, "-m", "celery", "-A", "llmtuner", "worker", "-Q", "playground",
                       "--concurrency", "1", "-n", "playground@%h", "-l", "INFO"],
        # Dataset preparation, so an upload never waits behind prompts or the short tasks.
        "preparer": [python, "-m", "celery", "-A", "llmtuner", "worker", "-Q", "datasets",
                     "--concurrency", "1", "-n", "datasets@%h", "-l", "INFO"],
        # Pushes to the Hugging Face Hub: long uploads, kept off the default queue's SageMaker polling.
        "exporter": [python, "-m", "celery", "-A", "llmtuner", "worker", "-Q", "exports",
                     "--concurrency", "1", "-n", "exports@%h", "-l", "INFO"],
        "beat": [python, "-m", "celery", "-A", "llmtuner", "beat", "-l", "INFO"],
    }  # fmt: skip


def main(host: str = "127.0.0.1", port: str = "8000") -> int:
    processes = {
        name: subprocess.Popen(command, start_new_session=True)
        for name, command in commands(host, port).items()
    }
    print(
        f"\n  LLM Tuner is running on http://{host}:{port}/  (Ctrl-C stops web, workers and beat)\n",
        flush=True,
    )

    stopping = False

    def request_stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    exit_code = 0
    while not stopping:
        for name, process in processes.items():
            if process.poll() is not None:
                print(f"{name} exited with code {process.returncode}; stopping the others.", flush=True)
                exit_code = process.returncode or 1
                stopping = True
        time.sleep(0.5)

    for process in processes.values():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for process in processes.values():
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    print("Stopped.", flush=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
