"""Plain round-to-nearest (RTN) weight quantization: the baseline calibrated methods must beat.

Each row of a Linear weight is cut into groups of `group_size` inputs; each group gets its own
scale (and zero point when asymmetric) from its min/max, and every weight is rounded to the nearest
level. This is the same integer grid compressed-tensors stores for AWQ/GPTQ (int levels
[-2^(b-1), 2^(b-1)-1], symmetric scale = absmax / ((2^b - 1) / 2)), so a comparison against it
measures only what calibration buys.
"""
from __future__ import annotations

import torch


def fake_quantize(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> torch.Tensor:
    """Quantize-dequantize `weight` [out, in] group-wise; returns a tensor of the same dtype."""
    out_features, in_features = weight.shape
    size = in_features if group_size <= 0 else group_size
    if in_features % size:
        raise ValueError(f"group size {size} does not divide {in_features} inputs")
    w = weight.float().reshape(out_features, in_features // size, size)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if symmetric:
        scale = w.abs().amax(-1, keepdim=True) / ((qmax - qmin) / 2)
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        q = torch.clamp(torch.round(w / scale), qmin, qmax)
        deq = q * scale
    else:
        low = w.amin(-1, keepdim=True).clamp(max=0)  # the grid always holds an exact zero
        high = w.amax(-1, keepdim=True).clamp(min=0)
        scale = (high - low) / (qmax - qmin)
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        zero = torch.clamp(torch.round(qmin - low / scale), qmin, qmax)
        q = torch.clamp(torch.round(w / scale + zero), qmin, qmax)
        deq = (q - zero) * scale
    return deq.reshape(out_features, in_features).to(weight.dtype)


def rtn_quantize_(model: torch.nn.Module, bits: int, group_size: int, symmetric: bool,
                  ignore: tuple[str, ...] = ("lm_head",)) -> list[str]:
    """Replace every Linear weight of `model` (except names ending in `ignore`) by its RTN version."""
    done = []
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and not any(name.split(".")[-1] == i or name == i for i in ignore):
                module.weight.copy_(fake_quantize(module.weight, bits, group_size, symmetric))
                done.append(name)
    return done
