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


def test_non_finite_parameters_reads_the_bits_as_torch_isfinite_sees_them():
    """The CPU check reads raw bits in place (no 2.4x temporaries); the names it reports are those
    torch.isfinite finds, for every float dtype and a non-contiguous parameter (checked by torch, in slices)."""
    from runtime.load import non_finite_parameters

    model = torch.nn.Module()
    for i, dtype in enumerate((torch.float32, torch.float16, torch.bfloat16, torch.float64)):
        for bad in (None, float("nan"), float("inf"), float("-inf")):
            p = torch.randn(70, 33).to(dtype)
            if bad is not None:
                p[69, 32] = bad
            model.register_parameter(f"p{i}_{bad}", torch.nn.Parameter(p, requires_grad=False))
    transposed = torch.randn(33, 70)
    transposed[5, 7] = float("nan")
    model.register_parameter("transposed", torch.nn.Parameter(transposed.t(), requires_grad=False))
    model.register_parameter("ints", torch.nn.Parameter(torch.arange(6), requires_grad=False))
    want = [n for n, p in model.named_parameters() if p.is_floating_point() and not torch.isfinite(p).all()]
    assert len(want) == 13 and non_finite_parameters(model) == want
