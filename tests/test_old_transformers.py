"""`--to llama` output of a LongRoPE model loads in transformers 4.46.3 with the logits OpenBMB's code gives.

4.43-4.5x read LongRoPE differently from 5.x: `factor` must be inside rope_scaling (a TypeError
without it) and the original context at the config's top level (else the attention scale uses
max_position_embeddings: 1.0801 instead of 1.0954 at 64k/32k). `make setup` installs 4.46.3 with its
tokenizers and huggingface_hub into .venv/transformers-4.46.3; it runs in a subprocess that shares
the venv's torch.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from published import IDS, close_to, published, reference  # noqa: F401 (fixtures)

OLD = Path(sys.prefix) / "transformers-4.46.3"
SCRIPT = """
import json, sys, torch, transformers
from transformers import AutoModelForCausalLM
assert transformers.__version__ == "4.46.3", transformers.__version__
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32)
with torch.no_grad():
    torch.save(model(torch.tensor([json.loads(sys.argv[2])])).logits[0], sys.argv[3])
"""


def old_transformers_logits(folder: Path, out: Path) -> torch.Tensor:
    assert OLD.is_dir(), f"{OLD} is missing: `make setup` installs transformers 4.46.3 there"
    env = dict(os.environ, PYTHONPATH=str(OLD))
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(folder), json.dumps(IDS), str(out)], env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    return torch.load(out)


@pytest.fixture(scope="module")
def converted(published, tmp_path_factory):
    from converters.to_llama import convert_to_llama

    root = tmp_path_factory.mktemp("old-transformers")
    return {name: convert_to_llama(published(name), root / name, "f32") and root / name
            for name in ("MiniCPM4.1-8B", "MiniCPM4-8B-long-no-mup", "MiniCPM-V-4-llm")}


@pytest.mark.parametrize("name", ["MiniCPM4.1-8B", "MiniCPM4-8B-long-no-mup", "MiniCPM-V-4-llm"])
def test_longrope_llama_output_matches_openbmbs_code_in_transformers_4_46(name, converted, reference, tmp_path):
    close_to(old_transformers_logits(converted[name], tmp_path / "logits.pt"), reference(name))


def test_without_the_top_level_original_context_4_46_scales_attention_wrongly(converted, reference, tmp_path):
    """The check above can fail: the same folder minus the top-level key is measurably off."""
    folder = tmp_path / "llama"
    folder.mkdir()
    for f in converted["MiniCPM4.1-8B"].iterdir():
        (folder / f.name).symlink_to(f)
    config = json.loads((folder / "config.json").read_text())
    del config["original_max_position_embeddings"]
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps(config))
    logits, expected = old_transformers_logits(folder, tmp_path / "logits.pt"), reference("MiniCPM4.1-8B")
    assert (logits - expected).abs().max().item() > 1e-3 * expected.abs().max().item()
