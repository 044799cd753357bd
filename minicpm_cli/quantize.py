"""`minicpm quantize` (in progress)."""
from .app import app  # noqa: F401
