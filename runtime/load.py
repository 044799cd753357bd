"""Load any MiniCPM artifact as a runnable model: `open_model(path)` gives an HFModel or a GGUFModel,
one interface (LoadedModel) over both; no other module compares backends.

- MiniCPM 1/2/4 and MiniCPM-MoE folders are folded to Llama/Mixtral in memory (no remote code).
- Llama/Mixtral folders, including quantized ones from `minicpm quantize`, load with transformers.
- MiniCPM3 folders load with transformers' native `minicpm3`.
- `.gguf` files load with llama-cpp-python (f32 KV cache, so logits match a float reference).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from converters.checkpoint import Checkpoint, model_folder, read_config, read_json
from converters.errors import UsageError, UserError
from converters.families import family_of
from converters.gguf_read import is_gguf
from converters.tokenizer import load_tokenizer


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available on this machine (use --device cpu)")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device {device}: expected cpu, cuda or auto")
    return device


def folded_model(ckpt: Checkpoint, dtype: torch.dtype = torch.float32):
    """A transformers Llama/Mixtral holding the muP-folded weights of a MiniCPM checkpoint."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from converters.mup import folded_config

    plan = ckpt.family.fold_plan(ckpt)
    config_dict = folded_config(ckpt, dtype)
    config = AutoConfig.for_model(**config_dict)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = {t.name: t.make().to(dtype) for t in plan}
    if ckpt.family.moe:
        state = fuse_experts(state, config.num_local_experts)
    if config.tie_word_embeddings:  # the folded embedding is the head too (see converters.mup)
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight  # one tensor, as from_pretrained ties it
    # Non-persistent buffers (RoPE inverse frequencies) were made on the meta device: rebuild them.
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    return model.eval()


def fuse_experts(state: dict, n_experts: int) -> dict:
    """Checkpoint-layout Mixtral experts (w1, w2, w3 per expert) in transformers 5's fused layout.

    transformers 5 keeps experts as mlp.experts.gate_up_proj [E, 2I, H] (w1 rows then w3 rows) and
    mlp.experts.down_proj [E, H, I]; from_pretrained converts on load, load_state_dict does not.
    """
    out = {}
    for name, value in state.items():
        if ".block_sparse_moe.experts." in name:
            continue
        out[name.replace(".block_sparse_moe.gate.", ".mlp.gate.")] = value
    layers = {n.split(".block_sparse_moe.")[0] for n in state if ".block_sparse_moe.experts." in n}
    for layer in layers:
        e = [f"{layer}.block_sparse_moe.experts.{i}." for i in range(n_experts)]
        out[f"{layer}.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([state[p + "w1.weight"], state[p + "w3.weight"]]) for p in e])
        out[f"{layer}.mlp.experts.down_proj"] = torch.stack([state[p + "w2.weight"] for p in e])
    return out


@dataclass
class LoadedModel:
    """A model ready to score or generate, with its tokenizer and what it came from."""
    path: Path
    backend: str  # "hf" or "gguf"
    family: str
    model: object
    tokenizer: object
    device: str = "cpu"
    max_positions: int = 0
    eos_ids: list[int] = field(default_factory=list)
    quantization: str | None = None

    def logits(self, ids: list[int]) -> torch.Tensor:
        """Float32 logits [len(ids), vocab] for one sequence."""
        return self.window_logits([ids], len(ids))[0].float().cpu().clone()  # GGUF: a view of llama.cpp's buffer

    def window_logits(self, inputs: list[list[int]], keep: int) -> torch.Tensor:
        """Logits [B, keep, V] at the last `keep` positions of equal-length inputs."""
        raise NotImplementedError

    def encode(self, text: str, bos: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=bos)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def template_info(self) -> tuple[str | None, str, str, str]:
        """(chat template or None, where it was looked for, bos text, eos text)."""
        raise NotImplementedError

    def text_stream(self, context: list[int]):
        """An incremental detokenizer for replies that follow `context`."""
        raise NotImplementedError

    def tokens(self, generator, prompt_ids: list[int], sampling) -> Iterator[int]:
        """Sampled token ids after the prompt, one per step, the stop token included."""
        raise NotImplementedError

    def weights_format(self, dtype: torch.dtype) -> str:
        """What the scored weights are: a GGUF file type (f16, q4_k_m…), a quantization method, or a dtype."""
        raise NotImplementedError

    def peak_memory(self, mem) -> tuple[int, str]:
        """(bytes, kind) this model's load and use grew memory by, from a runtime.perplexity.PeakMemory."""
        return max(mem.rss_growth, mem.device_growth), "rss"

    def context_room(self, n_ctx: int) -> int:
        """The longest context this loaded model can hold, at most n_ctx."""
        return n_ctx

    def close(self) -> None:
        """Free what the backend holds outside Python's collector."""


class HFModel(LoadedModel):
    """A transformers model on `device`, with its HF tokenizer."""

    def window_logits(self, inputs: list[list[int]], keep: int) -> torch.Tensor:
        x = torch.tensor(inputs, device=self.device)
        with torch.inference_mode():
            return self.model(input_ids=x, use_cache=False, logits_to_keep=keep).logits

    def shipped_sampling(self) -> tuple[dict, str, list]:
        """(sampling values, where from, eos ids) of generation_config.json (see runtime.model_defaults)."""
        path = self.path / "generation_config.json"
        config = read_json(path) if path.is_file() else {}
        if not isinstance(config, dict):
            raise UserError(f"{path}: expected a JSON object")
        values = {k: config[k] for k in ("temperature", "top_p", "top_k", "repetition_penalty")
                  if isinstance(config.get(k), (int, float)) and not isinstance(config.get(k), bool)}
        if config.get("do_sample") is False:  # transformers: greedy, whatever temperature says
            values["temperature"] = 0.0
        eos = config.get("eos_token_id")
        return values, "generation_config.json", eos if isinstance(eos, list) else [] if eos is None else [eos]

    def template_info(self) -> tuple[str | None, str, str, str]:
        from converters.tokenizer import chat_template, chat_template_file

        tok = self.tokenizer
        where = f"{self.path.name}/{chat_template_file(self.path)}"
        return chat_template(self.path), where, tok.bos_token or "", tok.eos_token or ""

    def text_stream(self, context: list[int]):
        from .generate import HFTextStream

        return HFTextStream(self.tokenizer, context)

    def tokens(self, generator, prompt_ids: list[int], sampling) -> Iterator[int]:
        return generator.hf_tokens(prompt_ids, sampling)  # the KV cache lives with the generator

    def weights_format(self, dtype: torch.dtype) -> str:
        from converters.tensors import DType

        return str(self.quantization) if self.quantization else DType.of(dtype).short

    def peak_memory(self, mem) -> tuple[int, str]:
        if self.device == "cuda":
            return mem.cuda_growth, "cuda"
        return super().peak_memory(mem)


class GGUFModel(LoadedModel):
    """A GGUF file in llama.cpp (llama-cpp-python), with llama.cpp's own tokenizer."""

    def window_logits(self, inputs: list[list[int]], keep: int) -> torch.Tensor:
        """With one input the tensor is a view of llama.cpp's score buffer: use it before the next call."""
        llama, rows = self.model, []
        for seq in inputs:
            llama.reset()
            llama.eval(seq)
            view = torch.from_numpy(llama.scores[len(seq) - keep: len(seq)])
            rows.append(view if len(inputs) == 1 else view.clone())
        return torch.stack(rows) if len(rows) > 1 else rows[0][None]

    def shipped_sampling(self) -> tuple[dict, str, list]:
        """(sampling values, where from, eos ids): the general.sampling.* keys convert copies."""
        meta = self.model.metadata or {}
        keys = {"temperature": "temp", "top_p": "top_p", "top_k": "top_k", "repetition_penalty": "penalty_repeat"}
        values = {k: meta[f"general.sampling.{key}"] for k, key in keys.items() if f"general.sampling.{key}" in meta}
        return values, "GGUF metadata", []

    def template_info(self) -> tuple[str | None, str, str, str]:
        llama = self.model
        meta = llama.metadata or {}
        bos, eos = llama.token_bos(), llama.token_eos()
        text = lambda i: llama.detokenize([i], special=True).decode("utf-8", "replace") if i >= 0 else ""  # noqa: E731
        return meta.get("tokenizer.chat_template"), f"{self.path.name} GGUF metadata", text(bos), text(eos)

    def text_stream(self, context: list[int]):
        from .generate import ByteTextStream

        llama = self.model
        return ByteTextStream(lambda t: llama.detokenize([t], special=False) if t != llama.token_bos() else b"")

    def tokens(self, generator, prompt_ids: list[int], s) -> Iterator[int]:
        llama = self.model
        llama.set_seed(s.seed if s.seed is not None else 0xFFFFFFFF)  # llama.cpp: 0xFFFFFFFF = random
        # llama-cpp-python reuses the KV cache of the longest common prefix with the previous call.
        yield from llama.generate(prompt_ids, top_k=s.top_k, top_p=s.top_p, min_p=0.0, typical_p=1.0,
                                  temp=s.temperature, repeat_penalty=s.repetition_penalty)

    def weights_format(self, dtype: torch.dtype) -> str:
        import gguf

        try:
            name = gguf.LlamaFileType(int(self.quantization)).name
        except (TypeError, ValueError):  # no general.file_type, or one this gguf package does not know
            return "unknown" if self.quantization is None else f"file type {self.quantization}"
        return name.removeprefix("MOSTLY_").removeprefix("ALL_").lower()

    def context_room(self, n_ctx: int) -> int:
        return min(n_ctx, self.model.n_ctx())

    def close(self) -> None:
        """Free llama.cpp's model now (left to interpreter shutdown, its finaliser prints a traceback)."""
        self.model.close()


def _eos_ids(config: dict) -> list[int]:
    eos = config.get("eos_token_id", 2)
    return list(eos) if isinstance(eos, list) else [eos]


def quiet_loading(quant: dict | None):
    """Quantized folders: keep compressed-tensors' / bitsandbytes' bars and notes off our tables and chat."""
    import contextlib
    import warnings

    if not quant:
        return contextlib.nullcontext()
    # bitsandbytes notes, once per layer kind, that it casts bf16 inputs to f16 while generating
    warnings.filterwarnings("ignore", message="MatMul8bitLt")
    try:
        from converters.quiet import quiet
    except ImportError:  # the quant extra is not installed: its libraries may be chatty
        return contextlib.nullcontext()
    return quiet()


def load_hf(path: Path | str, device: str = "cpu", dtype: torch.dtype | None = None, tokenizer=None) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    folder = model_folder(path)
    config = read_config(folder)
    quant = config.get("quantization_config")
    dtype = dtype or torch.float32
    try:
        # a float folder is checked tensor by tensor; a quantized one holds packed tensors
        ckpt = None if quant else Checkpoint(folder)
        if ckpt:
            ckpt.check_finite = False  # scoring or chatting with it only warns (below)
        family = ckpt.family if ckpt else family_of(config, folder / "config.json")
        config = ckpt.config if ckpt else family.complete(config)[0]  # OpenBMB's defaults filled in
        from converters.lora import is_view

        if ckpt and (family.folds_for_transformers or is_view(folder)):
            model = folded_model(ckpt, dtype)
        elif ckpt or family.hf_config(config) is not None:  # float, or a config transformers cannot read alone
            model = family.load_float(folder, config, dtype)
        else:
            with quiet_loading(quant):
                model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False, device_map=device)
                if quant.get("quant_method") == "compressed-tensors":
                    # compressed-tensors decompresses on the first forward (with its own bars): do it now
                    with torch.no_grad():
                        model(input_ids=torch.tensor([[config.get("bos_token_id") or 0]], device=model.device))
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{folder}: cannot load model ({type(exc).__name__}: {exc})") from None
    if not quant:
        model = model.to(device)
    warn_non_finite(model, folder)
    method = quant.get("quant_method") if quant else None
    return HFModel(folder, "hf", family.name, model.eval(), tokenizer or load_tokenizer(folder), device,
                   config.get("max_position_embeddings", 0), _eos_ids(config), method)


def non_finite_parameters(model) -> list[str]:
    from converters.floats import tensor_finite

    with torch.no_grad():
        return [name for name, p in model.named_parameters() if not tensor_finite(p)]


def warn_non_finite(model, where) -> None:
    """NaN/inf weights make every score NaN: say so on stderr before the results, once per model."""
    import sys

    bad = non_finite_parameters(model)
    if bad:
        print(f"warning: {where}: {len(bad)} weight tensors hold NaN or infinite values (first: {bad[0]}); "
              "its outputs are meaningless", file=sys.stderr, flush=True)


class GGUFTokenizer:
    """encode/decode through llama.cpp's own tokenizer, with the HF tokenizer's call signature."""

    def __init__(self, llama):
        self.llama = llama

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.llama.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=True)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.llama.detokenize(ids, special=not skip_special_tokens).decode("utf-8", errors="replace")

    def __len__(self) -> int:
        return self.llama.n_vocab()


@contextlib.contextmanager
def llama_cpp_errors():
    """Collect llama.cpp's error log lines (llama-cpp-python sends them to a silenced stderr when
    verbose=False), so a load failure can name llama.cpp's own reason in one line."""
    import ctypes

    import llama_cpp
    from llama_cpp import _logger

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        if level == 4:  # GGML_LOG_LEVEL_ERROR in the ggml this llama-cpp-python bundles (3 is WARN)
            lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def llama_cpp_reason(lines: list[str], exc: Exception) -> str:
    """The most specific line llama.cpp logged ("error loading model: missing tensor ..."), else exc."""
    text = [line.strip() for line in "".join(lines).splitlines() if line.strip()]
    specific = [line for line in text if "error loading model:" in line] or text[-1:]
    return (specific[0].split("error loading model:")[-1].strip() if specific else str(exc))[:300]


def load_gguf(path: Path | str, n_ctx: int = 2048, threads: int | None = None, device: str = "cpu",
              logits_all: bool = True) -> LoadedModel:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        from llama_cpp import Llama
    except ImportError:
        raise UserError("reading GGUF needs llama-cpp-python (pip install llama-cpp-python)") from None
    from converters.gguf_read import gguf_metadata

    meta = gguf_metadata(path)
    arch = meta.get("general.architecture", "llama")
    train_ctx = int(meta.get(f"{arch}.context_length", n_ctx))
    with llama_cpp_errors() as errors:
        try:
            llama = Llama(str(path), n_ctx=n_ctx, logits_all=logits_all, n_threads=threads or os.cpu_count(),
                          n_batch=min(n_ctx, 512), type_k=0, type_v=0, verbose=False,
                          n_gpu_layers=-1 if device == "cuda" else 0)
        except Exception as exc:
            raise UserError(f"{path}: llama.cpp cannot load this GGUF ({llama_cpp_reason(errors, exc)})") from None
    eos = [int(meta["tokenizer.ggml.eos_token_id"])] if "tokenizer.ggml.eos_token_id" in meta else []
    if "tokenizer.ggml.eot_token_id" in meta:
        eos.append(int(meta["tokenizer.ggml.eot_token_id"]))
    return GGUFModel(path, "gguf", arch, llama, GGUFTokenizer(llama), device, train_ctx, eos,
                     meta.get("general.file_type"))


def open_model(path: Path | str, device: str = "cpu", n_ctx: int | None = 2048, dtype: torch.dtype | None = None,
               threads: int | None = None, logits_all: bool = True, tokenizer=None) -> LoadedModel:
    """A model folder (HFModel) or a GGUF file (GGUFModel): the one place that tells them apart.

    n_ctx: GGUF context to allocate; None = the model's trained length, at most DEFAULT_GGUF_CONTEXT
    (llama.cpp allocates it up front). logits_all: keep every position's logits (scoring) or only the
    last (generation). tokenizer: a folder's HF tokenizer already loaded (eval-ppl tokenized with it)."""
    path = Path(path)
    device = resolve_device(device)
    if path.suffix == ".gguf" or is_gguf(path):
        if n_ctx is None:
            from converters.gguf_read import gguf_metadata

            meta = gguf_metadata(path)
            trained = meta.get(f"{meta.get('general.architecture', 'llama')}.context_length", DEFAULT_GGUF_CONTEXT)
            n_ctx = min(int(trained), DEFAULT_GGUF_CONTEXT)
        model = load_gguf(path, n_ctx=n_ctx, threads=threads, device=device, logits_all=logits_all)
        if threads:
            from .generate import set_gguf_threads

            set_gguf_threads(model.model, threads)  # prompt batches too (llama-cpp-python: every core)
        return model
    if threads:
        torch.set_num_threads(threads)
    return load_hf(path, device, dtype, tokenizer)


DEFAULT_GGUF_CONTEXT = 4096  # minicpm chat's default context


def load_model(path: Path | str, device: str = "cpu", n_ctx: int = 2048) -> LoadedModel:
    return open_model(path, device, n_ctx)
