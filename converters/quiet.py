"""Keep the quantizing libraries' own bars and log lines off the terminal while ours is shown.

llm-compressor, compressed-tensors and transformers each draw tqdm bars and print log lines
(llm-compressor's logger even writes to stdout, which would corrupt `--json`-style output). The CLI
shows one rich progress bar and a final table instead; errors still surface as exceptions.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import warnings

# llm-compressor configures its loguru sink (on stdout) when first imported; this must be set before.
os.environ.setdefault("LLM_COMPRESSOR_LOG_DISABLED", "true")


def _metric_level() -> None:
    """Disabled, llm-compressor skips registering its METRIC log level, then GPTQ logs at it and
    loguru raises for the unknown level even though nothing would be printed."""
    from loguru import logger

    try:
        logger.level("METRIC")
    except ValueError:
        logger.level("METRIC", no=38)


_metric_level()

TQDM_MODULES = (
    "llmcompressor.pipelines.sequential.pipeline", "llmcompressor.modifiers.transform.awq.base",
    "llmcompressor.pipelines.cache", "compressed_tensors.quantization.lifecycle.apply",
    "compressed_tensors.compressors.model_compressors.model_compressor", "compressed_tensors.offload.dispatch",
)
QUIET_LOGGERS = ("torch.fx._symbolic_trace", "transformers.modeling_utils", "transformers.distributed.tensor_parallel",
                 "bitsandbytes.backends.cpu.ops")


def silent_tqdm(*args, **kwargs):
    from tqdm import tqdm

    kwargs["disable"] = True  # some callers pass their own `disable=`
    return tqdm(*args, **kwargs)


_depth = 0  # quiet() nests (quantize loads through runtime.load, which is quiet too): only the outer one acts


@contextlib.contextmanager
def quiet():
    global _depth
    if _depth:
        yield
        return
    _depth += 1
    try:
        with _quiet():
            yield
    finally:
        _depth -= 1


@contextlib.contextmanager
def _quiet():
    from loguru import logger
    from tqdm import tqdm
    from transformers.utils import logging as hf_logging

    # loggers first: importing the modules below imports bitsandbytes, whose CPU backend logs a
    # warning at import on a CPU with AVX512-BF16 ("Failed to load CPU gemm_4bit_forward")
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    patched = []
    for name in TQDM_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if getattr(module, "tqdm", None) is tqdm:
            module.tqdm = silent_tqdm
            patched.append(module)
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    for name in ("llmcompressor", "compressed_tensors"):
        logger.disable(name)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*offloaded modules.*")
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        for module in patched:
            module.tqdm = tqdm
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if bars_were_on:
            hf_logging.enable_progress_bar()
        logger.enable("compressed_tensors")
