"""The training script and its modules (see README.md).

The Django side imports only the standard-library modules shared with it:
``training_scripts.hyperparameters`` and ``training_scripts.progress``. The script's own
modules import each other by bare name, with this folder on sys.path (finetune.py puts it
there), because SageMaker runs ``python finetune.py`` from an uploaded copy of the folder.
"""
