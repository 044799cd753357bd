"""Calibration and evaluation text: WikiText-2, Alpaca and custom files, offline-first."""
from .samples import CalibrationSet, calibration_samples, documents, pack
from .sources import load_wikitext2_text, wikitext2_rows

__all__ = ["CalibrationSet", "calibration_samples", "documents", "pack", "load_wikitext2_text", "wikitext2_rows"]
