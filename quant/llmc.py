"""AWQ and GPTQ through llm-compressor's `oneshot`, saved as compressed-tensors.

llm-compressor runs the model one decoder layer at a time (its "sequential pipeline"): it feeds the
calibration rows through a layer, quantizes that layer (GPTQ) or searches its smoothing scales
(AWQ), then propagates the quantized layer's outputs to the next one. We hook the end of each layer
to drive our progress bar (`converters.quiet` keeps its own bars and logs off the terminal).

The model stays in CPU memory: the pipeline wraps every module so that its weights are onloaded to
the execution device only while it runs (compressed-tensors' offloading), so with --device cuda one
decoder layer, its calibration activations and its GPTQ Hessians are on the GPU at a time and a
model larger than the GPU quantizes. The pipeline picks "the first accelerator" by itself;
`onload_to` makes it the device the user named (cpu included).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import torch


@contextlib.contextmanager
def no_pinned_memory_without_accelerator():
    """Skip llm-compressor's pinned-memory step when there is no accelerator.

    AWQ pins the cached layer inputs (`IntermediatesCache.pin_memory`) so that its grid search can
    copy them to the GPU without blocking. Pinning page-locks host memory *for a device*: with no
    CUDA/XPU device torch raises ("RuntimeError: Cannot access accelerator device when none is
    available", measured with llm-compressor 0.14.0.1), and on a CPU-only machine the inputs never
    leave host memory, so skipping the step changes nothing but the crash.
    """
    if torch.accelerator.is_available():
        yield
        return
    from llmcompressor.pipelines.cache import IntermediatesCache

    original = IntermediatesCache.__dict__["pin_memory"]
    IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original


@contextlib.contextmanager
def onload_to(device: str):
    """Make llm-compressor's sequential pipeline run each layer on `device` (not its own pick)."""
    from llmcompressor.pipelines.sequential import pipeline

    original = pipeline.get_main_device
    pipeline.get_main_device = lambda: torch.device(device)
    try:
        yield
    finally:
        pipeline.get_main_device = original


@contextlib.contextmanager
def one_thread_gptq_solve(device: str):
    """On CPU, run GPTQ's solve (llm-compressor's `quantize_weight`) in one torch thread.

    The solve walks the columns one at a time in Python: per column a handful of ops on [rows]
    and [rows, <=128] tensors, too small to pay for a parallel region. With two threads on the
    two shared cores (load average ~4) every op waits at an OpenMP barrier for a descheduled
    thread: quantize_weight on a 1536x1536 weight took 10.5 s with 2 threads and 1.2 s with 1;
    3840x1536, 20.3 s and 1.4 s (bench-out/micro_gptq.py, same run). Calibration forwards keep
    every thread (their matmuls are large). On GPU the loop runs as a kernel: unchanged.
    """
    if device != "cpu":
        yield
        return
    from llmcompressor.modifiers.gptq import base

    original = base.__dict__["quantize_weight"]

    def quantize_weight(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return original(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    base.quantize_weight = quantize_weight
    try:
        yield
    finally:
        base.quantize_weight = original


@contextlib.contextmanager
def layer_callback(on_layer: Callable[[], None] | None):
    """Call `on_layer()` each time llm-compressor finishes calibrating one decoder layer."""
    if on_layer is None:
        yield
        return
    from llmcompressor.core import LifecycleCallbacks

    original = LifecycleCallbacks.__dict__["sequential_epoch_end"]
    bound = LifecycleCallbacks.sequential_epoch_end

    def sequential_epoch_end(submodules=None, *args, **kwargs):
        result = bound(submodules, *args, **kwargs)
        # the pipeline's pieces are the decoder layers plus the embedding and the final norm/head
        if any(type(m).__name__.endswith("DecoderLayer") for m in submodules or ()):
            on_layer()
        return result

    LifecycleCallbacks.sequential_epoch_end = staticmethod(sequential_epoch_end)
    try:
        yield
    finally:
        LifecycleCallbacks.sequential_epoch_end = original


def scheme(bits: int, group_size: int, symmetric: bool, act_order: bool | None, targets: list[str],
           observer: str | None = None):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    weights = QuantizationArgs(
        num_bits=bits, type="int", symmetric=symmetric, dynamic=False,
        strategy="channel" if group_size <= 0 else "group", group_size=None if group_size <= 0 else group_size,
        actorder="weight" if act_order else None, observer=observer)
    return {"group_0": QuantizationScheme(targets=targets, weights=weights)}


def recipe(method: str, bits: int, group_size: int, symmetric: bool, act_order: bool | None, ignore: list[str],
           awq_mappings: list | None = None, device: str = "cpu") -> list:
    """llm-compressor modifiers: AWQ (scale search, then clip search and rounding) or GPTQ."""
    if method == "awq":
        # AWQ is a scale search *and* a clip search (AutoAWQ's apply_clip, which the seeds ran).
        # llm-compressor leaves clipping to the weight observer, and its min-max default clips
        # nothing; the MSE observer searches each group's range. Measured on the tiny model
        # (held-out text): min-max AWQ-4 11.76 = RTN-4 11.77, with the MSE observer 11.69.
        groups = scheme(bits, group_size, symmetric, None, ["Linear"], observer="memoryless_mse")
        from llmcompressor.modifiers.quantization import QuantizationModifier
        from llmcompressor.modifiers.transform import AWQModifier

        return [AWQModifier(mappings=awq_mappings), QuantizationModifier(config_groups=groups, ignore=ignore)]
    groups = scheme(bits, group_size, symmetric, act_order, ["Linear"])
    from llmcompressor.modifiers.quantization import GPTQModifier

    # Same-shape Linears (q/o, k/v, gate/up, MoE experts) solved two at a time: one Python column
    # loop for both halves the loop's per-op overhead. llm-compressor's "auto" sizes batches from free
    # CUDA memory and solves one at a time on CPU; two bounds the extra fp32 working copy to one more
    # Linear. One thread, 1536x1536: 1.22 s per Linear alone, 0.75 s two at a time (micro_gptq.py).
    batched = 2 if device == "cpu" else "auto"
    return [GPTQModifier(config_groups=groups, ignore=ignore, actorder="weight" if act_order else None,
                         batched_quantization=batched)]


def oneshot_quantize(model, tokenizer, rows: list[list[int]], method: str, bits: int, group_size: int,
                     symmetric: bool, act_order: bool | None, ignore: list[str], workdir: Path,
                     on_layer: Callable[[], None] | None = None, awq_mappings: list | None = None,
                     device: str = "cpu"):
    """Quantize `model` (in CPU memory) in place with AWQ or GPTQ on the calibration rows, each layer
    run on `device`; returns the model.
    `awq_mappings`: the family's norm -> projection map (None: llm-compressor's own by architecture)."""
    from llmcompressor import oneshot
    from torch.utils.data import DataLoader

    # oneshot re-reads config.json from `name_or_path` (to refuse quantized models, and again on save
    # to write the "original" config). A model folded in memory has no such folder and a MiniCPM3
    # source's config.json has auto_map and lacks the rope fix, so point it at the config we hold.
    model.config.save_pretrained(workdir)
    model.config._name_or_path = str(workdir)

    data = [{"input_ids": torch.tensor(r, dtype=torch.long)} for r in rows]  # the pipeline onloads them
    loader = DataLoader(data, batch_size=1)  # rows may differ in length (the last one): no padding
    modifiers = recipe(method, bits, group_size, symmetric, act_order, ignore, awq_mappings, device)
    with (no_pinned_memory_without_accelerator(), layer_callback(on_layer), onload_to(device),
          one_thread_gptq_solve(device)):
        return oneshot(model=model, processor=tokenizer, dataset=loader, recipe=modifiers,
                       num_calibration_samples=len(rows), max_seq_length=max(len(r) for r in rows))


EXPERT_NAMES = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}


def classic_mixtral_names(folder: Path) -> int:
    """Rename a saved Mixtral's experts to the Mixtral checkpoint layout; returns tensors renamed.

    llm-compressor quantizes MoE experts as one Linear each and saves them as
    `mlp.experts.{e}.gate_proj/up_proj/down_proj`. transformers 5 only knows how to gather (and,
    for compressed-tensors, dequantize) Mixtral experts from the published checkpoint names
    `block_sparse_moe.experts.{e}.w1/w3/w2`, which are also what vLLM's Mixtral reads; under the
    other names the experts silently load as random weights.
    """
    import json
    import re

    from safetensors.torch import load_file, save_file

    # transformers' save already maps `.mlp.` back to `.block_sparse_moe.`; accept either
    pattern = re.compile(r"\.(?:mlp|block_sparse_moe)\.(experts\.\d+\.)(gate_proj|up_proj|down_proj)\."
                         r"|\.(?:mlp|block_sparse_moe)\.(gate)\.")

    def rename(key: str) -> str:
        return pattern.sub(lambda m: (f".block_sparse_moe.{m.group(1)}{EXPERT_NAMES[m.group(2)]}."
                                      if m.group(1) else ".block_sparse_moe.gate."), key)

    renamed = 0
    for shard in sorted(folder.glob("*.safetensors")):
        tensors = load_file(shard)
        new = {rename(k): v for k, v in tensors.items()}
        changed = sum(a != b for a, b in zip(tensors, new))
        if changed:
            save_file(new, shard, metadata={"format": "pt"})
            renamed += changed
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {rename(k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2) + "\n")
    return renamed
