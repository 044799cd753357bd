"""`minicpm eval_ppl` (in progress)."""
from .app import app  # noqa: F401
