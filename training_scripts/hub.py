"""The Hugging Face Hub: is a base model there, may we have it, and what to tell the user if not."""

from __future__ import annotations

import contextlib
import os
import threading

from reporting import TrainingError, log

HUB_CHECK_TIMEOUT_S = 20.0


def hf_token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def _hub_offline() -> bool:
    with contextlib.suppress(Exception):
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _hub_preflight(repo_id: str, token: str | None) -> str:
    """One quick access check (no retries): "ok", "network" (Hub unreachable), or raise TrainingError."""
    from huggingface_hub import auth_check
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    result: dict[str, BaseException | None] = {}

    def check():
        try:
            auth_check(repo_id, token=token)
            result["error"] = None
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            result["error"] = exc

    thread = threading.Thread(target=check, daemon=True)
    thread.start()
    thread.join(HUB_CHECK_TIMEOUT_S)
    if "error" not in result:
        return "network"
    error = result["error"]
    if error is None:
        return "ok"
    if isinstance(error, GatedRepoError):
        why = "the HF_TOKEN given has no access to it" if token else "no HF_TOKEN is set"
        raise TrainingError(
            f"Model '{repo_id}' is gated on the Hugging Face Hub and {why}: accept its licence at "
            f"https://huggingface.co/{repo_id} with your account, then set HF_TOKEN to a token of that "
            "account."
        )
    if isinstance(error, RepositoryNotFoundError):
        hint = "" if token else " (a private model also needs HF_TOKEN)"
        raise TrainingError(
            f"Model '{repo_id}' was not found on the Hugging Face Hub: check the model id{hint}."
        )
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            raise TrainingError(
                f"Access to model '{repo_id}' was refused by the Hugging Face Hub (HTTP {status}): "
                "check HF_TOKEN and that your account accepted the model's licence."
            )
    log(f"Hugging Face Hub not reachable ({type(error).__name__}); trying the local cache")
    return "network"


def resolve_base_model(name: str, token: str | None) -> tuple[str, bool]:
    """(what to pass to from_pretrained, local_files_only). Fails fast with a clear message."""
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        return path, True
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        raise TrainingError(f"Model folder '{name}' does not exist (a local base model must be a folder).")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise TrainingError(
            f"'{name}' is neither a valid Hugging Face Hub model id (expected 'name' or 'org/name') "
            "nor a local folder."
        ) from None
    if _hub_offline():
        return name, True
    return name, _hub_preflight(name, token) == "network"


def unavailable(name: str, local_only: bool, exc: Exception) -> TrainingError:
    if local_only:
        return TrainingError(
            f"Model '{name}' could not be loaded: the Hugging Face Hub cannot be reached (offline mode or no "
            "network) and the model is not in the local cache: check the model id, give the training machine "
            "network access to huggingface.co (set HF_TOKEN and accept the licence for gated models), or use "
            "a local model folder."
        )
    return TrainingError(f"Model '{name}' could not be loaded: {type(exc).__name__}: {exc}")
