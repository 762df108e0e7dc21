"""The hyperparameters of issue 14's contract C4 that other engineers add to the spec.

Until their side is merged, `with_contract_params` adds them to the spec for one test,
exactly as C4 names them (`qlora` among the methods, `checkpoint_minutes` in minutes, 0 =
off), so the platform's side of the contract is tested against it. Once the spec has them,
it changes nothing.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from jobs import forms
from training_scripts.hyperparameters import DEFAULTS, HYPERPARAMETERS, Param


@pytest.fixture
def with_contract_params(monkeypatch):
    method = HYPERPARAMETERS["method"]
    if "qlora" not in (method.choices or ()):
        monkeypatch.setitem(HYPERPARAMETERS, "method", replace(method, choices=(*method.choices, "qlora")))
    if "checkpoint_minutes" not in HYPERPARAMETERS:
        param = Param("checkpoint_minutes", "float", 0.0, "Minutes between checkpoints (0 = off).", 0, 10_000)
        monkeypatch.setitem(HYPERPARAMETERS, "checkpoint_minutes", param)
        monkeypatch.setitem(DEFAULTS, "checkpoint_minutes", 0.0)
        monkeypatch.setattr(
            forms, "HYPERPARAMETER_FIELDS", (*forms.HYPERPARAMETER_FIELDS, "checkpoint_minutes")
        )
    yield
