"""What OpenBMB's own code assumes where a published config.json is silent, and what no runtime here has.

A published config may omit keys its configuration class defaults. Each family fills them in
(Family.complete, from the values here) when a Checkpoint is opened, and every path (GGUF plan,
in-memory fold, transformers) reads the completed config, so a missing key means the same everywhere:

- muP: `MiniCPMConfig` (MiniCPM 1/2/4, MoE) and `MiniCPM3Config` both default scale_emb = scale_depth =
  dim_model_base = 1 (transformers' own MiniCPM3Config says 12 / 1.4 / 256, llama.cpp's graph
  hard-codes those: neither is what the model's code would run).
- MiniCPM3's value head width: OpenBMB's attention uses hidden_size // num_attention_heads whatever the
  config says; MiniCPM3-4B's config.json has no v_head_dim (64 either way).

InfLLM v2 (`sparse_config`, MiniCPM4) has no implementation in transformers' Llama or llama.cpp; its
attention runs dense, as transformers' own MiniCPM does without the kernel. MiniCPM-S's FATReLU
(`hidden_act: fatrelu`, threshold `hidden_act_param`) has no Llama or llama.cpp equivalent: every path
that would have to express it refuses instead of running SiLU.
"""
from __future__ import annotations

import sys

from .errors import UserError

MUP_DEFAULTS = {"scale_emb": 1, "scale_depth": 1, "dim_model_base": 1}  # ints, as the classes declare

_said: set[str] = set()


def notice(message: str) -> None:
    """Print a note on stderr once per verb (minicpm_cli.ui.stage forgets them between verbs)."""
    if message not in _said:
        _said.add(message)
        print(f"note: {message}", file=sys.stderr)


def forget_notices() -> None:
    _said.clear()


def runtime_notes(config: dict, where) -> list[str]:
    """What every verb says once about this config (InfLLM v2's sparse attention runs dense)."""
    if config.get("sparse_config"):
        return [f"{where}: sparse_config (InfLLM v2 sparse attention) is not implemented by any runtime here; "
                "attention runs dense, as in transformers"]
    return []


def check_activation(config: dict, where) -> None:
    """Refuse an MLP activation that Llama / llama.cpp cannot express (MiniCPM-S's FATReLU)."""
    act = config.get("hidden_act", "silu")
    if act != "silu":
        extra = f" (threshold hidden_act_param={config['hidden_act_param']})" if "hidden_act_param" in config else ""
        raise UserError(f"{where}: hidden_act {act}{extra} has no Llama or llama.cpp equivalent; "
                        "refusing rather than running SiLU in its place")
