"""The progress protocol and the modules the Django side shares with the script."""

from __future__ import annotations

import subprocess
import sys

from training_scripts import progress
from training_scripts.tests.helpers import ROOT, SCRIPTS_DIR


def test_progress_lines_are_ordered_json_and_never_nan():
    line = progress.format_event("progress", loss=float("nan"), step=3, extra="x", total_steps=9)
    assert line == '{"event": "progress", "step": 3, "total_steps": 9, "loss": null, "extra": "x"}'
    assert progress.parse_event(line + "\n")["loss"] is None
    assert progress.parse_event("some library warning") is None
    assert progress.parse_event('{"event": "unknown"}') is None
    assert progress.match_metrics(line) == {}


HEAVY_LIBRARIES_BLOCKED = (
    "import sys\n"
    "for name in ('torch', 'transformers', 'peft', 'tokenizers', 'huggingface_hub', 'numpy'):\n"
    "    sys.modules[name] = None  # importing any of them now fails\n"
)


def test_shared_modules_need_only_the_standard_library():
    code = HEAVY_LIBRARIES_BLOCKED + (
        "from training_scripts import hyperparameters, progress\n"
        "assert hyperparameters.validate_hyperparameters({})[1] == {}\n"
        "print(progress.format_event('done', step=1))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '{"event": "done", "step": 1}'


def test_bad_arguments_are_answered_before_the_heavy_libraries_load():
    code = (
        HEAVY_LIBRARIES_BLOCKED
        + f"sys.path.insert(0, {str(SCRIPTS_DIR)!r})\n"
        + "import finetune\n"
        + "sys.exit(finetune.main(['--train_dir', '/nowhere', '--learning_rate', '5']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2, proc.stderr
    event = progress.parse_event(proc.stdout)
    assert event["event"] == "error" and set(event["errors"]) == {"learning_rate"}
