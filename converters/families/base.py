"""What a model family is: every fact other modules need about one architecture, in one object.

The defaults describe a plain Llama-shaped checkpoint (transformers' `llama`); a family module
overrides what differs. Nothing outside converters/families compares family names: it asks the
family object (`ckpt.family`, or `family_of(config)`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from pathlib import Path

if TYPE_CHECKING:
    import torch



class Family:
    name = ""  # shown to users and written into results
    architecture = ""  # config.json "architectures" entry that names it
    model_type = ""  # config.json "model_type" that names it
    moe = False  # experts and a router per layer; in memory and after folding a Mixtral
    expert_block = "mlp"  # where the checkpoint keeps experts and router (Mixtral: block_sparse_moe)
    tied_by_default = False  # what a config without tie_word_embeddings means
    gguf_arch = "llama"  # llama.cpp architecture of a native (unfolded) GGUF
    chat_style: str | None = None  # built-in chat template when a model ships none; None: by vocabulary
    lora_refusal: str | None = None  # why --lora cannot merge into this family; None: it can

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<family {self.name}>"

    # --- recognition, checks and shapes -------------------------------------------------------
    def named_by(self, config: dict) -> bool:
        return self.architecture in (config.get("architectures") or []) or config.get("model_type") == self.model_type

    def matches(self, config: dict) -> bool:
        """Whether config.json describes this family."""
        return self.named_by(config)

    # keys OpenBMB's configuration class fills in when config.json omits them (converters.official)
    official_defaults: dict = {}

    def complete(self, config: dict) -> tuple[dict, list[str]]:
        """(config with the official defaults filled in, 'key=value' for each one filled): every path reads
        the completed config, so a missing key means the same thing in GGUF, the fold and transformers."""
        filled = {k: v for k, v in self.official_defaults.items() if config.get(k) is None}
        return config | filled, [f"{k}={v:g}" for k, v in filled.items()]

    def shapes(self, config: dict, where) -> dict[str, tuple[int, ...]]:
        """Every tensor name a checkpoint must hold, with its shape, as config.json implies them."""
        from ..shapes import llama_shapes

        return llama_shapes(config, where, self.moe, self.expert_block)

    # --- muP ----------------------------------------------------------------------------------
    def mup_scales(self, config: dict, where):
        """The muP scalars to fold into the weights (none for a plain Llama)."""
        from ..mup import MupScales

        return MupScales(1.0, 1.0, 1.0)

    def folded_config(self, config: dict, dtype: torch.dtype) -> dict:
        """The Llama/Mixtral config.json with the same function: already plain, so every field is kept
        (mup.folded_config sets the tie and eps the fold implies) and the rope keys older runtimes need
        are completed."""
        from ..mup import rope_fields

        out = {k: v for k, v in config.items() if k not in ("auto_map", "_name_or_path", "dtype")}
        out |= {"tie_word_embeddings": False, "torch_dtype": str(dtype).removeprefix("torch.")}
        return out | rope_fields(out, fold_factors=False)

    def fold_plan(self, ckpt) -> list:
        from ..mup import fold_plan

        return fold_plan(ckpt)

    # --- GGUF ---------------------------------------------------------------------------------
    def gguf_plan(self, ckpt, fold: bool):
        from ..gguf_plan import plan_llama

        return plan_llama(ckpt)

    # --- transformers ---------------------------------------------------------------------------
    def hf_config(self, config: dict):
        """The transformers config to load a float folder with, when config.json alone will not do."""
        return None

    def load_float(self, folder: Path, config: dict, dtype: torch.dtype):
        """A float folder of this family as a transformers model (no remote code); a family that
        `folds_for_transformers` is built from its fold plan instead (runtime.load.folded_model)."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False, dtype=dtype)

    folds_for_transformers = False  # True: transformers gets the muP-folded Llama/Mixtral, not this folder

    # --- quantization ---------------------------------------------------------------------------
    def awq_mappings(self):
        """Which norm/linear feeds which layers, for AWQ's scale search; None: llm-compressor's own."""
        return None

    def float_modules(self, llmc_names: bool) -> list[str]:
        """Modules quantizers must leave in float besides --ignore: MoE routers (a 4-bit router picks
        the wrong experts). llm-compressor takes regexes (`.gate` is the router as mlp.gate in memory and
        block_sparse_moe.gate on disk); transformers' bnb skip list matches name fragments."""
        if not self.moe:
            return []
        return ["re:.*\\.gate$" if llmc_names else "mlp.gate"]

    def layer_widths(self, config: dict) -> dict[str, int]:
        """The input widths of the layers a quantizer touches, by the name users know them by."""
        widths = {"hidden size": config.get("hidden_size"), "intermediate size": config.get("intermediate_size")}
        heads, head_dim = config.get("num_attention_heads"), config.get("head_dim")
        if heads and head_dim:
            widths["attention output width (heads x head_dim)"] = heads * head_dim
        return {k: v for k, v in widths.items() if isinstance(v, int) and v > 0}
