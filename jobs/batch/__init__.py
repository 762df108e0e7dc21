"""Batch submission: many jobs from one manifest, checked by the launch form's own rules.

A manifest is YAML::

    jobs:
      - name: support-bot-small
        user: alice@example.com
        dataset: data/support.csv        # a file, imported for the user as `import_dataset` does,
        mapping: prompt:question,completion:answer   # read with this mapping (optional),
        base_model: scratch:tiny-gpt2    # or a catalogue name ("GPT-2 small")
        backend: local
        hyperparameters: {epochs: 1, max_steps: 50}
      - name: support-bot-cloud
        user: alice@example.com
        dataset: 12                      # or one of the user's ready datasets, by id
        base_model: Qwen/Qwen2.5-0.5B
        backend: sagemaker
        instance_type: ml.g5.xlarge
        instance_count: 2                # optional, SageMaker only: 1 to 8 instances train together
        method: lora
        preset: automatic                # optional: start from a preset, then the hyperparameters above
        max_cost_usd: 5

or JSON (which the YAML reader reads), or CSV with the same columns,
hyperparameters as a JSON object in a `hyperparameters` column or one
`hp.<name>` column each. Relative paths are read from the manifest's folder.

`run_manifest` works in phases, and nothing is imported or submitted unless
every entry passed the phase before; each module here is one step:

- `reading`: the file into its entries, as written;
- `entries`, `datasets`, `launch_form`: 1. check every entry
  (`check_manifest`): the user, the dataset (ownership, readiness; for a file:
  that it exists and that its first rows read with the mapping), the model,
  the backend and instance type, and then the whole entry through
  `NewJobForm`, the launch form itself, so hyperparameters, SageMaker
  availability and the estimate follow the web form's rules; the SageMaker
  entries of each user must fit in the monthly budget together;
- `datasets`: 2. import the file datasets (`import_datasets`), reusing a
  dataset imported before from a file with the same bytes and mapping for the
  same user;
- `submit`: 3. check the entries again with their imported datasets
  (`recheck`): their estimates and budgets could not be known before; 4.
  submit (`submit`) through `actions.launch_job`, as the launch form does;
- `plan`: what a run knows of each entry, and its problems.

Each job carries `batch_key`, a hash of its entry (user, name, dataset or file
content, model, backend, instance type, preset, hyperparameters, cap), so a
second run of the same manifest finds the jobs it submitted and submits
nothing twice.
"""

from __future__ import annotations

from jobs.batch.datasets import import_datasets
from jobs.batch.entries import (
    PRESET_NAMES,
    UnknownModel,
    UnknownUser,
    check_manifest,
    find_model,
    find_user,
)
from jobs.batch.plan import ALREADY, NEW, NOT_SUBMITTED, SUBMITTED, Entry, Plan, Problem
from jobs.batch.submit import recheck, run_manifest, submit

__all__ = [
    "ALREADY",
    "NEW",
    "NOT_SUBMITTED",
    "PRESET_NAMES",
    "SUBMITTED",
    "Entry",
    "Plan",
    "Problem",
    "UnknownModel",
    "UnknownUser",
    "check_manifest",
    "find_model",
    "find_user",
    "import_datasets",
    "recheck",
    "run_manifest",
    "submit",
]
