"""Load any MiniCPM artifact as a runnable model: one small interface over HF and GGUF backends.

- MiniCPM 1/2/4 and MiniCPM-MoE folders are folded to Llama/Mixtral in memory (no remote code).
- Llama/Mixtral folders, including quantized ones from `minicpm quantize`, load with transformers.
- MiniCPM3 folders load with transformers' native `minicpm3`.
- `.gguf` files load with llama-cpp-python (f32 KV cache, so logits match a float reference).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from converters.checkpoint import Checkpoint, model_folder, read_json
from converters.errors import UsageError, UserError
from converters.gguf_read import is_gguf
from converters.official import check_activation
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

    from converters.mup import fold_plan, folded_config

    plan = fold_plan(ckpt)
    config_dict = folded_config(ckpt.config, ckpt.family, dtype)
    config = AutoConfig.for_model(**config_dict)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = {t.name: t.make().to(dtype) for t in plan}
    if config.model_type == "mixtral":
        state = fuse_experts(state, config.num_local_experts)
    model.load_state_dict(state, strict=True, assign=True)
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


def minicpm3_config(config: dict):
    """transformers' MiniCPM3Config for a MiniCPM3 checkpoint's completed config (Checkpoint.config).

    Its muP keys and v_head_dim carry OpenBMB's defaults (transformers' config class has others).
    OpenBMB's LongRoPE uses one factor set at every length (long_factor when max_position_embeddings >
    original), transformers' picks by the current length: fold_rope_scaling writes the used set into
    both slots, and the `factor` (max / original) transformers 5.17's MLA reads for the attention scale.
    """
    from transformers import MiniCPM3Config

    from converters.mup import fold_rope_scaling

    config = {k: v for k, v in config.items() if k not in ("auto_map", "architectures", "model_type")}
    config["rope_scaling"] = fold_rope_scaling(config)
    if isinstance(config.get("dim_model_base"), float) and config["dim_model_base"].is_integer():
        config["dim_model_base"] = int(config["dim_model_base"])  # transformers' class accepts int only
    return MiniCPM3Config(**config)


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
        if self.backend == "gguf":
            import numpy as np

            self.model.reset()
            self.model.eval(ids)
            return torch.from_numpy(np.array(self.model.scores[: len(ids)], dtype=np.float32))
        with torch.no_grad():
            x = torch.tensor([ids], device=self.device)
            return self.model(x).logits[0].float().cpu()

    def encode(self, text: str, bos: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=bos)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


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
        from quant.quiet import quiet
    except ImportError:  # the quant extra is not installed: its libraries may be chatty
        return contextlib.nullcontext()
    return quiet()


def load_hf(path: Path | str, device: str = "cpu", dtype: torch.dtype | None = None) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    folder = model_folder(path)
    config = read_json(folder / "config.json")
    quant = config.get("quantization_config")
    dtype = dtype or torch.float32
    try:
        ckpt = Checkpoint(folder) if quant is None else None  # the family from architectures or model_type
        if ckpt and ckpt.family in ("minicpm", "minicpm-moe"):
            family, model = ckpt.family, folded_model(ckpt, dtype)
        elif ckpt and ckpt.family == "minicpm3":
            from transformers import MiniCPM3ForCausalLM

            check_activation(ckpt.config, folder / "config.json")
            family = "minicpm3"
            model = MiniCPM3ForCausalLM.from_pretrained(folder, config=minicpm3_config(ckpt.config), dtype=dtype)
        else:
            family = ckpt.family if ckpt else config.get("model_type", "llama")
            kwargs = {"device_map": device} if quant else {"dtype": dtype}
            with quiet_loading(quant):
                model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False, **kwargs)
                if quant and quant.get("quant_method") == "compressed-tensors":
                    # compressed-tensors decompresses on the first forward (with its own bars): do it now
                    with torch.no_grad():
                        model(input_ids=torch.tensor([[config.get("bos_token_id") or 0]], device=model.device))
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{folder}: cannot load model ({type(exc).__name__}: {exc})") from None
    if not quant:
        model = model.to(device)
    method = quant.get("quant_method") if quant else None
    return LoadedModel(folder, "hf", family, model.eval(), load_tokenizer(folder), device,
                       config.get("max_position_embeddings", 0), _eos_ids(config), method)


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
    try:
        llama = Llama(str(path), n_ctx=n_ctx, logits_all=logits_all, n_threads=threads or os.cpu_count(),
                      n_batch=min(n_ctx, 512), type_k=0, type_v=0, verbose=False,
                      n_gpu_layers=-1 if device == "cuda" else 0)
    except Exception as exc:
        raise UserError(f"{path}: llama.cpp cannot load this GGUF ({exc})") from None
    eos = [int(meta["tokenizer.ggml.eos_token_id"])] if "tokenizer.ggml.eos_token_id" in meta else []
    if "tokenizer.ggml.eot_token_id" in meta:
        eos.append(int(meta["tokenizer.ggml.eot_token_id"]))
    return LoadedModel(path, "gguf", arch, llama, GGUFTokenizer(llama), device, train_ctx, eos,
                       meta.get("general.file_type"))


def load_model(path: Path | str, device: str = "cpu", n_ctx: int = 2048) -> LoadedModel:
    path = Path(path)
    device = resolve_device(device)
    if path.suffix == ".gguf" or is_gguf(path):
        return load_gguf(path, n_ctx=n_ctx, device=device)
    return load_hf(path, device)
