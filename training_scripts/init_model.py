"""Continue training from a saved model (C3): ``--init_model_dir`` / ``SM_CHANNEL_INIT_MODEL``.

The folder holds a full ``save_pretrained`` model, a PEFT adapter (``adapter_config.json``),
or a ``model.tar.gz`` of either (what a SageMaker job leaves in S3), which is extracted here
after every member was checked: plain files and folders only, no absolute paths, no ``..``,
no links. An adapter is loaded onto the base model and stays trainable (method ``lora``), or
is merged into it (method ``full``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tarfile
import tempfile
from pathlib import PurePosixPath

import hyperparameters as hp
from reporting import TrainingError, log

ARCHIVE_NAME = "model.tar.gz"


def is_adapter(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "adapter_config.json"))


def is_full_model(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "config.json"))


def resolve_init_model(location: str) -> str:
    """The folder that holds the saved model: ``location`` itself, or its extracted model.tar.gz."""
    if os.path.isfile(location) and location.endswith(".tar.gz"):
        return _model_folder(extract_archive(location), location)
    if not os.path.isdir(location):
        raise TrainingError(f"init_model_dir {location} does not exist")
    if is_adapter(location) or is_full_model(location):
        return location
    archive = os.path.join(location, ARCHIVE_NAME)
    if os.path.isfile(archive):
        return _model_folder(extract_archive(archive), archive)
    raise TrainingError(
        f"init_model_dir {location} holds no saved model: expected config.json (a full model), "
        f"adapter_config.json (a LoRA adapter) or {ARCHIVE_NAME}"
    )


def _model_folder(extracted: str, archive: str) -> str:
    """The extracted archive's model folder: its root, or the one folder at its root."""
    entries = os.listdir(extracted)
    candidates = [extracted]
    if len(entries) == 1 and os.path.isdir(os.path.join(extracted, entries[0])):
        candidates.append(os.path.join(extracted, entries[0]))
    for folder in candidates:
        if is_adapter(folder) or is_full_model(folder):
            return folder
    raise TrainingError(
        f"{archive} holds no saved model: expected config.json (a full model) or adapter_config.json "
        "(a LoRA adapter) at its root"
    )


def check_member(member: tarfile.TarInfo, archive: str) -> None:
    name = member.name
    if not (member.isfile() or member.isdir()):
        raise TrainingError(
            f"{archive}: {name!r} is a link or a special file; a model archive holds only files"
        )
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise TrainingError(f"{archive}: {name!r} points outside the archive's folder")


def extract_archive(archive: str) -> str:
    """Extract a model archive into a temporary folder (removed at exit) after checking every member."""
    destination = tempfile.mkdtemp(prefix="init-model-")
    atexit.register(shutil.rmtree, destination, ignore_errors=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                check_member(member, archive)
            # The "data" filter refuses the same again (and drops modes we do not want), where Python has it.
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(destination, members=members, **extra)  # noqa: S202  # nosec B202 - every member checked above
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise TrainingError(f"{archive} could not be extracted: {type(exc).__name__}: {exc}") from None
    log(f"extracted {archive} ({len(members)} entries) to {destination}")
    return destination


def load_init_model(location: str, hparams: dict, hardware):
    """(model, tokenizer, seq2seq) to train on, from the saved model at ``location``."""
    from modelling import load_pretrained  # modelling calls this module: imported here, not at the top

    folder = resolve_init_model(location)
    method, base = hparams["method"], hparams["base_model"]
    if not is_adapter(folder):
        log(f"continuing from the model in {folder}")
        return load_pretrained(folder, method, hardware.device, hardware.precision)
    if hp.is_scratch_model(base):
        raise TrainingError(
            f"init_model_dir holds a LoRA adapter, but {base} is rebuilt from the data at every run, so the "
            "adapter has no base to go on: continue from a merged model (merge_adapter true)"
        )
    from peft import PeftModel

    model, tokenizer, seq2seq = load_pretrained(base, method, hardware.device, hardware.precision)
    log(f"continuing from the adapter in {folder} on {base}")
    try:
        model = PeftModel.from_pretrained(model, folder, is_trainable=True)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise TrainingError(
            f"the adapter in init_model_dir does not fit base model {base}: "
            f"{type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    if method == "full":
        model = model.merge_and_unload()  # full fine-tuning goes on from base + adapter
    if os.path.isfile(os.path.join(folder, "tokenizer_config.json")):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer, seq2seq
