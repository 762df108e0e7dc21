import gc
import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

from llmtuner import scratch

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmtuner.settings")
application = get_wsgi_application()

# Partial uploads a killed web process left behind (llmtuner/scratch.py).
scratch.remove_stale_uploads()

# Load what the first request would (the URLconf and every view), then keep the ~100,000 objects
# of the loaded code out of the garbage collector's passes: they live as long as the process, and
# each request paid for walking them (3-9 % of a polled progress card's CPU, measured in-process).
get_resolver().url_patterns  # noqa: B018 - imported for its side effect
gc.freeze()
