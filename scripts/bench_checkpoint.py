"""The benchmark checkpoint: a random-weight MiniCPM with MiniCPM-1B's widths and real tokenizer.

hidden 1536, 24 heads / 8 KV heads, FFN 3840, tied embeddings, bf16, the real MiniCPM 1/2 tokenizer
(vocab 122,753) from ../shared; 12 layers (955 MB) unless asked for more (MiniCPM-1B has 52).
Written tensor by tensor under a temporary name, cached by the caller's --work folder.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT.parent / "shared" / "minicpm-hf" / "MiniCPM-2B-sft-bf16"
MINICPM_1B = {"hidden_size": 1536, "intermediate_size": 3840, "num_attention_heads": 24,
              "num_key_value_heads": 8, "num_hidden_layers": 52, "dim_model_base": 256, "scale_emb": 12,
              "scale_depth": 1.4, "max_position_embeddings": 4096, "tie_word_embeddings": True}


def ensure_checkpoint(out: Path, layers: int = 12) -> Path:
    """build_checkpoint in a child process, so the caller stays small: a child forked from a large
    process reports at least the parent's size as its peak RSS (Linux keeps the high-water mark across
    fork and exec), which would inflate every figure a benchmark measures afterwards."""
    if not (out / "config.json").is_file():
        subprocess.run([sys.executable, __file__, str(out), str(layers)], check=True)
    return out


def build_checkpoint(out: Path, layers: int = 12) -> Path:
    """A random MiniCPM-1B-width checkpoint (bf16, tied) with the real MiniCPM 1/2 tokenizer."""
    import torch

    from converters.tensors import BF16, OutTensor
    from converters.safetensors_out import write_sharded
    from converters.tiny import base_config, copy_real_tokenizer, weight_shapes
    from converters.tokenizer import load_tokenizer

    if (out / "config.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    copy_real_tokenizer(TOKENIZER, tmp)
    config = base_config("dense-gqa-tied", len(load_tokenizer(tmp))) | MINICPM_1B | {"num_hidden_layers": layers}

    def make(name, shape):
        g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        if len(shape) == 1:
            return 1.0 + 0.1 * torch.randn(shape, generator=g)
        scale = 1 / math.sqrt(shape[1])
        if name == "model.embed_tokens.weight":
            scale = 1 / config["scale_emb"]
        return torch.randn(shape, generator=g) * scale

    tensors = [OutTensor(n, s, (lambda n=n, s=s: make(n, s)), BF16) for n, s in weight_shapes(config).items()]
    write_sharded(tmp, tensors, BF16, 2 << 30)
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tmp.rename(out)
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    build_checkpoint(Path(sys.argv[1]), int(sys.argv[2]))
