"""Quantizers: AWQ/GPTQ through llm-compressor, bitsandbytes."""
