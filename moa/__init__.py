"""MoA Studio: layered Mixture-of-Agents runs, logged to SQLite."""

import os

# litellm downloads its price map at import time unless told to use the bundled copy; every
# entry point imports `moa` first, so setting it here covers the CLI, the app and the tests.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

__version__ = "0.1.0"
