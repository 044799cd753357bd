"""A lean decode loop for float transformers Llama models (every folded MiniCPM 1/2/4, plain Llama).

It computes what transformers' LlamaForCausalLM computes, from the same parameters, with less around
it: the KV cache is one tensor for all layers ([layers, kv_heads, capacity, head_dim], written in
place; its capacity doubles when a reply outgrows it, up to the context), q/k/v and gate/up run as one matmul each over weights concatenated once (the modules' own
parameters become views into them, so no weight is held twice), attention is one
scaled_dot_product_attention call over the cache prefix (grouped-query natively), RoPE's cos/sin
come from the model's own rotary module, and only the last position goes through the head. No
attention-mask objects, cache classes or output dataclasses are built per token.

Same function as the model's forward: RMSNorm, RoPE (rotate-half) and the GQA softmax are the same
formulas in the same dtype; the fused matmuls only reorder sums. tests/test_chat.py checks logits
against the model's own forward and greedy tokens against model.generate.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def supports(model) -> bool:
    """Float LlamaForCausalLM without biases or quantized layers (anything else keeps the HF loop)."""
    if type(model).__name__ != "LlamaForCausalLM" or getattr(model.config, "quantization_config", None):
        return False
    layer = model.model.layers[0]
    linears = [layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.down_proj]
    return (all(type(m) is torch.nn.Linear and m.bias is None for m in linears)
            and model.config.hidden_act == "silu" and model.lm_head.weight.is_floating_point())


def _fuse(modules: list[torch.nn.Linear]) -> torch.Tensor:
    """One weight for several Linear layers with the same input; each module's weight becomes a view."""
    weight = torch.cat([m.weight.detach() for m in modules])
    start = 0
    for m in modules:
        rows = m.weight.shape[0]
        m.weight = torch.nn.Parameter(weight[start: start + rows], requires_grad=False)
        start += rows
    return weight


class LlamaDecoder:
    """decoder.forward(ids, start) -> float logits of the last position, growing the static cache."""

    def __init__(self, model, max_len: int, first_capacity: int = 256):
        cfg = model.config
        self.model = model
        self.max_len, self.first_capacity = max_len, first_capacity
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.q_rows, self.kv_rows = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        self.layers = []
        dtype, device = model.lm_head.weight.dtype, model.lm_head.weight.device
        for layer in model.model.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append((
                layer.input_layernorm, _fuse([a.q_proj, a.k_proj, a.v_proj]), a.o_proj.weight,
                layer.post_attention_layernorm, _fuse([m.gate_proj, m.up_proj]), m.down_proj.weight, a.scaling))
        self.k = self.v = torch.zeros((len(self.layers), self.n_kv, 0, self.head_dim), dtype=dtype, device=device)

    def _reserve(self, end: int) -> None:
        """Room for positions < end; what the cache holds is kept."""
        capacity = self.k.shape[2]
        if end <= capacity:
            return
        capacity = min(self.max_len, max(end, 2 * capacity, self.first_capacity))
        k, v = (torch.zeros(*self.k.shape[:2], capacity, self.head_dim, dtype=self.k.dtype, device=self.k.device)
                for _ in range(2))
        k[:, :, :self.k.shape[2]], v[:, :, :self.v.shape[2]] = self.k, self.v
        self.k, self.v = k, v

    @staticmethod
    def _norm(norm, x: torch.Tensor) -> torch.Tensor:
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        return norm.weight * x32.to(x.dtype)

    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    @torch.inference_mode()
    def forward(self, ids: list[int], start: int) -> torch.Tensor:
        """Run tokens `ids` at positions start.. (the cache holds positions < start); logits [vocab]."""
        T, end = len(ids), start + len(ids)
        if end > self.max_len:
            raise ValueError(f"{end} positions exceed the context of {self.max_len}")
        self._reserve(end)
        inner = self.model.model
        x = inner.embed_tokens(torch.tensor(ids, device=self.k.device))  # [T, H]
        positions = torch.arange(start, end, device=self.k.device)[None]
        cos, sin = inner.rotary_emb(x, positions)  # [1, T, hd]
        mask = None
        if T > 1:  # causal over the whole prefix; a single new token sees everything cached
            mask = torch.ones(T, end, dtype=torch.bool, device=x.device).tril(diagonal=start)
        nq, nkv, hd = self.n_heads, self.n_kv, self.head_dim
        for i, (norm1, wqkv, wo, norm2, wgu, wdown, scaling) in enumerate(self.layers):
            qkv = F.linear(self._norm(norm1, x), wqkv)
            q = qkv[:, :self.q_rows].view(T, nq, hd).transpose(0, 1)
            k = qkv[:, self.q_rows:self.q_rows + self.kv_rows].view(T, nkv, hd).transpose(0, 1)
            v = qkv[:, self.q_rows + self.kv_rows:].view(T, nkv, hd).transpose(0, 1)
            self.k[i, :, start:end] = self._rope(k, cos, sin)
            self.v[i, :, start:end] = v
            attn = F.scaled_dot_product_attention(
                self._rope(q, cos, sin)[None], self.k[i, :, :end][None], self.v[i, :, :end][None],
                attn_mask=mask, scale=scaling, enable_gqa=nq != nkv)
            x = x + F.linear(attn[0].transpose(0, 1).reshape(T, nq * hd), wo)
            gate, up = F.linear(self._norm(norm2, x), wgu).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, wdown)
        return self.model.lm_head(inner.norm(x[-1:]))[0].float()
