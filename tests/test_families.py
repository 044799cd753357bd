"""The family table: published configs are recognised as their family, and only converters/families
(plus runtime.load's open_model for backends) tells families or backends apart."""
import json
import re
from pathlib import Path

import pytest
from conftest import ROOT, shared_path


@pytest.mark.parametrize("folder, family, gguf_arch", [
    ("MiniCPM3-4B", "minicpm3", "minicpm3"),
    ("MiniCPM4-8B", "minicpm", "minicpm"),
    ("MiniCPM5-2B-MLX", "llama", "llama"),
])
def test_a_published_config_is_recognised_as_its_family(folder, family, gguf_arch):
    from converters.families import family_of

    config = json.loads(shared_path("minicpm-hf", folder, "config.json").read_text())
    found = family_of(config, folder)
    assert (found.name, found.gguf_arch) == (family, gguf_arch)


def test_a_minicpm_config_with_experts_is_minicpm_moe_and_folds_into_mixtral():
    import torch

    from converters.families import family_of
    from converters.tiny import base_config

    config = base_config("moe", 256)
    family = family_of(config, "config.json")
    folded = family.folded_config(config, torch.float32)
    assert (family.name, family.moe) == ("minicpm-moe", True)
    assert (folded["architectures"], folded["num_local_experts"]) == (["MixtralForCausalLM"], 4)


def test_an_unsupported_architecture_is_one_error_naming_the_supported_ones():
    from converters.errors import UserError
    from converters.families import family_of

    config = json.loads(shared_path("minicpm-hf", "MiniCPM-V-4", "config.json").read_text())
    with pytest.raises(UserError, match=r"architecture MiniCPMV is not supported \(supported: MiniCPMForCausalLM, "
                                        r"MiniCPM3ForCausalLM, LlamaForCausalLM, MixtralForCausalLM\)"):
        family_of(config, "config.json")


def test_no_module_outside_the_family_table_compares_family_or_backend_names():
    # the test-model builders name their own presets ("moe", "minicpm4") and MiniCPM-V's wrapper, not families
    pattern = re.compile(r"""\b(family|model_type|backend)["']?\)?\s*(==|!=|in\s*\()|\.family\.startswith""")
    hits = []
    for package in ("converters", "runtime", "quant", "minicpm_cli"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith("converters/families/") or rel in ("converters/tiny.py", "converters/tiny_like.py"):
                continue
            hits += [f"{rel}:{i}: {line.strip()}" for i, line in enumerate(Path(path).read_text().splitlines(), 1)
                     if pattern.search(line)]
    assert hits == []
