"""Loading artifacts to run them: MiniCPM folders are folded in memory, MiniCPM3 loads natively."""
from __future__ import annotations

import pytest
import torch

from reference import load_minicpm, minicpm_logits

TEXT = "The quick brown fox jumps over the lazy dog. 北京欢迎你"


@pytest.mark.parametrize("family", ["dense-gqa-tied", "minicpm4", "moe"])
def test_minicpm_folder_folds_in_memory(family, tiny):
    from runtime.load import load_model

    src = tiny(family)
    model = load_model(src)
    assert model.backend == "hf" and type(model.model).__name__ in ("LlamaForCausalLM", "MixtralForCausalLM")
    ids = model.encode(TEXT)
    reference = minicpm_logits(*load_minicpm(src), ids)
    assert (model.logits(ids) - reference).abs().max().item() <= 1e-4 * reference.abs().max().item()


def test_minicpm3_loads_natively_despite_missing_rope_factor(tiny):
    from runtime.load import load_model

    model = load_model(tiny("minicpm3"))
    assert type(model.model).__name__ == "MiniCPM3ForCausalLM"
    assert torch.isfinite(model.logits(model.encode(TEXT))).all()


def test_device_cuda_without_gpu_is_one_clear_error(tiny):
    from converters.errors import UserError
    from runtime.load import load_model

    if torch.cuda.is_available():
        pytest.xfail("this machine has a GPU")  # the case under test needs a machine without one
    with pytest.raises(UserError, match="no CUDA GPU"):
        load_model(tiny("dense-gqa-tied"), device="cuda")
