"""Can the worker fetch this Hugging Face Hub model? Asked when it is chosen, answered before launch.

A Hub model once waited minutes in the queue and then failed because the worker could not fetch
it (offline, gated, a typo). Now, when a Hub model is chosen, a task on the default queue asks
the Hub, as the worker that trains would (its HF_TOKEN and HF_ENDPOINT, read in the worker), and
leaves the answer in the cache, where the new-job form polls for it and its `clean` reads it:

- the model exists and can be read (public, or gated and the token has accepted its licence):
  launched, with its size from the Hub's safetensors metadata against the worker's memory;
- missing, gated without a token or without access, or a token the Hub refuses: refused with
  the reason;
- the Hub cannot be reached: refused only when the worker has no copy of the model in its
  Hugging Face cache either (a job could not start), and that answer lives for 30 s only, so
  the launch goes through as soon as the network is back. With a cached copy the launch goes on.

No result yet (no worker has answered): the launch is not refused; the job is checked again
where it runs. Scratch recipes and local folders need no Hub and are never checked.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import asdict, dataclass

from django.core.cache import cache

from llmtuner.broker import send_on_commit
from training_scripts.hyperparameters import is_scratch_model

# How long an answer is trusted. A refusal is asked again sooner: the owner may accept the
# licence or fix the token; an unreachable Hub is asked again soonest.
KEEP_SECONDS = {"ok": 3600, "refused": 120, "unreachable": 30}
# One check at a time per model: while one is on its way, no other is sent.
PENDING_SECONDS = 30
HUB_TIMEOUT_SECONDS = 10
# How long the manifest command waits for the worker's answer about each Hub model.
MANIFEST_WAIT_SECONDS = 10
# The Hub's own rule for a repository id: `name` or `owner/name`.
REPO_ID = re.compile(r"^(?:[\w.-]{1,96}/)?[\w.-]{1,96}$")
# Memory to fine-tune one parameter on CPU in fp32: weights, gradients and AdamW's two moments.
BYTES_PER_PARAMETER = {"full": 16, "lora": 4}
GIB = 1024**3


@dataclass(frozen=True)
class HubCheck:
    hub_id: str
    state: str  # ok | refused | unreachable | pending
    message: str
    parameters: int | None = None
    gated: bool = False
    worker_memory_bytes: int | None = None
    cached_locally: bool = False

    @property
    def refuses_launch(self) -> bool:
        return self.state == "refused" or (self.state == "unreachable" and not self.cached_locally)

    def memory_needed_gib(self, method: str) -> float | None:
        if not self.parameters:
            return None
        return self.parameters * BYTES_PER_PARAMETER.get(method, 16) / GIB

    @property
    def memory_notes(self) -> list[str]:
        """What the worker's memory allows, per method; empty when the size is unknown."""
        if not self.parameters or not self.worker_memory_bytes:
            return []
        has = self.worker_memory_bytes / GIB
        notes = []
        for method, label in (("full", "Full fine-tuning"), ("lora", "LoRA")):
            need = self.memory_needed_gib(method)
            verdict = "fits" if need <= has else "does not fit"
            notes.append(f"{label} needs about {need:.1f} GiB: {verdict} in the worker's {has:.0f} GiB.")
        return notes


def needs_hub(hub_id: str) -> bool:
    """A Hub id, not a scratch recipe or a local folder."""
    if not hub_id or is_scratch_model(hub_id) or hub_id.startswith(("/", ".", "~")):
        return False
    return bool(REPO_ID.match(hub_id)) and ".." not in hub_id


def cache_key(hub_id: str) -> str:
    return "hub-check:" + hashlib.sha256(hub_id.encode()).hexdigest()


def pending_key(hub_id: str) -> str:
    return cache_key(hub_id) + ":pending"


def cached_result(hub_id: str) -> HubCheck | None:
    stored = cache.get(cache_key(hub_id))
    return HubCheck(**stored) if stored else None


def request_check(hub_id: str) -> HubCheck:
    """The answer when there is one; else a check is sent (once per PENDING_SECONDS) and 'pending'."""
    result = cached_result(hub_id)
    if result is not None:
        return result
    if cache.add(pending_key(hub_id), time.time(), PENDING_SECONDS):
        from jobs.tasks import check_hub_model

        send_on_commit(check_hub_model, (hub_id,))
    return HubCheck(hub_id, "pending", "Checking the model on the Hugging Face Hub…")


def wait_for_result(hub_id: str, seconds: float) -> HubCheck:
    """request_check, waiting up to `seconds` for the worker's answer (the manifest command)."""
    deadline = time.monotonic() + seconds
    result = request_check(hub_id)
    while result.state == "pending" and time.monotonic() < deadline:
        time.sleep(0.2)
        result = request_check(hub_id)
    return result


def launch_refusal(hub_id: str) -> str:
    """Why a job on this model cannot start ('' when it can, or when no answer is in yet)."""
    if not needs_hub(hub_id):
        return ""
    result = cached_result(hub_id)
    return result.message if result is not None and result.refuses_launch else ""


# --- In the worker -------------------------------------------------------------------------------


def check_and_store(hub_id: str) -> HubCheck:
    """Ask the Hub (in the worker) and keep the answer for the form and the manifest command."""
    result = check_hub_model(hub_id, token=os.environ.get("HF_TOKEN", "").strip() or None)
    cache.set(cache_key(hub_id), asdict(result), KEEP_SECONDS.get(result.state, 30))
    cache.delete(pending_key(hub_id))
    return result


def check_hub_model(hub_id: str, token: str | None) -> HubCheck:
    """Does `hub_id` exist, is it gated, can `token` read it, and how big is it."""
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    memory = worker_memory_bytes()
    if os.path.isdir(hub_id):
        return HubCheck(hub_id, "ok", f"A folder on the worker: {hub_id}.", worker_memory_bytes=memory)
    # HF_ENDPOINT read now, as the training script will read it (huggingface_hub reads it at import).
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token or False)
    page = f"{api.endpoint}/{hub_id}"
    try:
        info = api.model_info(hub_id, timeout=HUB_TIMEOUT_SECONDS)
        gated = bool(info.gated)
        if gated:
            api.auth_check(hub_id)
    except GatedRepoError:
        if not token:
            message = (
                f"{hub_id} is gated and the worker has no HF_TOKEN: set HF_TOKEN for the worker to a "
                f"token of a Hugging Face account that accepted the model's licence at {page}."
            )
        else:
            message = (
                f"{hub_id} is gated and the worker's HF_TOKEN cannot read it: accept the model's licence "
                f"at {page} with the account the token belongs to."
            )
        return HubCheck(hub_id, "refused", message, gated=True, worker_memory_bytes=memory)
    except RepositoryNotFoundError:
        message = f"There is no model {hub_id} on the Hugging Face Hub (or it is private and "
        message += "the worker's HF_TOKEN cannot see it)." if token else "the worker has no HF_TOKEN)."
        return HubCheck(hub_id, "refused", message, worker_memory_bytes=memory)
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            message = f"The Hugging Face Hub refuses the worker's HF_TOKEN (invalid or expired) for {hub_id}."
            return HubCheck(hub_id, "refused", message, worker_memory_bytes=memory)
        return _unreachable(hub_id, f"the Hub answered HTTP {status}", memory)
    except (httpx2.HTTPError, OSError) as error:
        return _unreachable(hub_id, _reason(error), memory)
    parameters = info.safetensors.total if info.safetensors else None
    access = "gated, and the worker's HF_TOKEN can read it" if gated else "public"
    return HubCheck(
        hub_id,
        "ok",
        f"{hub_id} is on the Hugging Face Hub ({access}).",
        parameters=parameters,
        gated=gated,
        worker_memory_bytes=memory,
    )


def _reason(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text.splitlines()[0][:200]


def _unreachable(hub_id: str, reason: str, memory: int | None) -> HubCheck:
    cached = in_local_cache(hub_id)
    if cached:
        message = (
            f"The worker cannot reach the Hugging Face Hub ({reason}), but it has {hub_id} in its cache: "
            "the job can train from that copy."
        )
    else:
        message = (
            f"The worker cannot reach the Hugging Face Hub ({reason}) and has no copy of {hub_id}: a job "
            "would fail to start. Launch again once the worker is online (checked again every "
            f"{KEEP_SECONDS['unreachable']} s), or choose a scratch model, which needs no download."
        )
    return HubCheck(hub_id, "unreachable", message, worker_memory_bytes=memory, cached_locally=cached)


def in_local_cache(hub_id: str) -> bool:
    """Whether the worker's Hugging Face cache (HF_HOME) holds this model's config."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub_id, "config.json")
    return isinstance(found, str)


def worker_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
