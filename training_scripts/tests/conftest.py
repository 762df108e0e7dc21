"""The script's modules import each other by their bare names (``import progress``), as they
do when SageMaker runs ``python finetune.py`` inside the folder: the tests put the folder on
sys.path the same way finetune.py does."""

from __future__ import annotations

import sys

from training_scripts.tests.helpers import SCRIPTS_DIR

if str(SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(SCRIPTS_DIR))
