"""Quantizers: AWQ/GPTQ through llm-compressor, bitsandbytes, and the RTN baseline (see quantize.py)."""
