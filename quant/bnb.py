"""bitsandbytes 4-bit (nf4/fp4) and 8-bit (LLM.int8) through transformers' BitsAndBytesConfig.

bitsandbytes quantizes while transformers loads the float weights, so it needs a float folder
(a MiniCPM source is first written as its folded Llama/Mixtral form) and no calibration data.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import torch


def bnb_config(bits: int, bnb_type: str, double_quant: bool, compute_dtype: torch.dtype, skip: list[str]):
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=bnb_type,
                              bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=compute_dtype,
                              llm_int8_skip_modules=skip)


def keep_cpu_layout(model) -> None:
    """Keep 4-bit weights in their saved layout on CPU, so what we save is what we ran.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit on its first CPU forward:
    absmax becomes a transposed bfloat16 tensor. Saving afterwards restores only the packed weight,
    not absmax, so the checkpoint reloads with different logits and no error (measured here); and
    the repacked model computes with bfloat16-rounded scales. Turning the repack off keeps the
    reference layout (float32 absmax); the saved checkpoint is unchanged by it.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


@contextlib.contextmanager
def weight_callback(on_weight: Callable[[str], None] | None):
    """Call `on_weight(name)` as transformers quantizes each weight while loading."""
    if on_weight is None:
        yield
        return
    from transformers.integrations import bitsandbytes as integration

    classes = [getattr(integration, n) for n in ("Bnb4bitQuantize", "Bnb8bitQuantize") if hasattr(integration, n)]
    originals = {cls: cls.convert for cls in classes}

    def wrap(original):
        def convert(self, input_dict, *args, **kwargs):
            result = original(self, input_dict, *args, **kwargs)
            for name in input_dict:
                on_weight(name)
            return result
        return convert

    for cls in classes:
        cls.convert = wrap(originals[cls])
    try:
        yield
    finally:
        for cls, original in originals.items():
            cls.convert = original


def linear_names(float_folder: Path, config, skip: list[str]) -> list[str]:
    """The Linear layers bitsandbytes will quantize, from a weightless (meta-device) copy of the model."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.quantizers.quantizers_utils import should_convert_module

    config = config or AutoConfig.from_pretrained(float_folder, trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return [name for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and should_convert_module(name, skip)]


def bnb_quantize(float_folder: Path, bits: int, bnb_type: str, double_quant: bool, dtype: torch.dtype,
                 skip: list[str], device: str, config=None, on_weight: Callable[[str], None] | None = None):
    """Load `float_folder` quantized by bitsandbytes onto `device`; returns the model."""
    from transformers import AutoModelForCausalLM

    quantization = bnb_config(bits, bnb_type, double_quant, dtype, skip)
    kwargs = {"config": config} if config is not None else {}
    with weight_callback(on_weight):
        model = AutoModelForCausalLM.from_pretrained(
            float_folder, quantization_config=quantization, device_map=device, dtype=dtype,
            trust_remote_code=False, **kwargs)
    keep_cpu_layout(model)
    return model.eval()
