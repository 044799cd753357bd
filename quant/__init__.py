"""Quantizers: `quantize.py` runs prepare -> quantize -> save with one METHODS entry per method
(AWQ/GPTQ through llm-compressor in `llmc.py`, bitsandbytes in `bnb.py`)."""
