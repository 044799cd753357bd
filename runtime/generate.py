"""Generate a reply from prompt ids, streamed as text, over both backends (HF and GGUF).

GGUF models sample with llama.cpp's own sampler chain (through llama-cpp-python). HF models run an
incremental decode loop with a KV cache kept between turns, and sample with the same chain in torch:
repetition penalty over the last 64 generated tokens, top-k, top-p on the untempered distribution,
then temperature and a draw. So one set of flags means the same on every artifact, and at
temperature 0 both backends pick the argmax after the same penalty: the same tokens.

Text is decoded incrementally without ever emitting half a UTF-8 character (byte-fallback tokens of
Chinese text arrive one byte at a time).
"""
from __future__ import annotations

import codecs
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from converters.errors import UsageError

PENALTY_LAST_N = 64  # llama.cpp's default penalty window (llama-cpp-python's last_n_tokens_size)


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.02  # 1.0: off
    max_new_tokens: int = 512
    seed: int | None = None

    def check(self) -> "Sampling":
        import math

        for name, value in (("--temperature", self.temperature), ("--top-p", self.top_p),
                            ("--repetition-penalty", self.repetition_penalty)):
            if not math.isfinite(value):
                raise UsageError(f"{name} {value}: must be a finite number")
        if self.max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens {self.max_new_tokens}: must be at least 1")
        if self.temperature < 0:
            raise UsageError(f"--temperature {self.temperature}: must be 0 (greedy) or more")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"--top-p {self.top_p}: must be in (0, 1]")
        if self.top_k < 0:
            raise UsageError(f"--top-k {self.top_k}: must be 0 (off) or more")
        if self.repetition_penalty <= 0:
            raise UsageError(f"--repetition-penalty {self.repetition_penalty}: must be more than 0")
        return self


@dataclass
class Stats:
    """What one reply cost. first_token_s includes the prompt's prefill."""
    prompt_tokens: int = 0
    new_tokens: int = 0
    first_token_s: float = 0.0
    total_s: float = 0.0
    stop: str = ""  # eos, length, context, interrupted

    @property
    def tokens_per_s(self) -> float:
        """Decode speed: tokens after the first over the time after the first."""
        span = self.total_s - self.first_token_s
        return (self.new_tokens - 1) / span if self.new_tokens > 1 and span > 0 else 0.0


def sample_token(logits: torch.Tensor, recent: list[int], s: Sampling, generator: torch.Generator | None) -> int:
    """One token from float logits [V], in llama.cpp's sampler order (see the module docstring)."""
    logits = logits.float()
    if s.repetition_penalty != 1.0 and recent:
        seen = torch.tensor(sorted(set(recent[-PENALTY_LAST_N:])), device=logits.device)
        vals = logits[seen]
        logits = logits.clone()
        logits[seen] = torch.where(vals > 0, vals / s.repetition_penalty, vals * s.repetition_penalty)
    if s.temperature == 0:
        return int(logits.argmax())
    if s.top_k > 0:
        values, order = logits.topk(min(s.top_k, logits.numel()))
    else:
        values, order = logits.sort(descending=True)
    if s.top_p < 1.0:
        probs = values.softmax(-1)
        # keep the smallest head whose mass reaches top_p (llama.cpp: the token that crosses it included)
        keep = int((probs.cumsum(-1) - probs < s.top_p).sum())
        values, order = values[:max(keep, 1)], order[:max(keep, 1)]
    choice = torch.multinomial((values / s.temperature).softmax(-1), 1, generator=generator)
    return int(order[choice])


class HFTextStream:
    """Incremental detokenizer for transformers tokenizers.

    Decodes a short window of tokens (a few already shown plus the new ones) and emits the text past
    what was shown, so pieces that depend on their neighbour (leading spaces) come out right; while
    the window ends in an incomplete UTF-8 sequence (U+FFFD) it waits for more bytes.
    """

    def __init__(self, tokenizer, context: list[int] = ()):
        self.tokenizer = tokenizer
        self.ids = list(context)[-4:]
        self.prefix = 0  # window start
        self.read = len(self.ids)  # tokens already shown

    def _text(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token: int) -> str:
        self.ids.append(token)
        shown = self._text(self.ids[self.prefix:self.read])
        text = self._text(self.ids[self.prefix:])
        if len(text) > len(shown) and not text.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(shown):]
        return ""

    def flush(self) -> str:
        shown = self._text(self.ids[self.prefix:self.read])
        text = self._text(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return text[len(shown):]


class ByteTextStream:
    """Incremental detokenizer over token bytes (llama.cpp's pieces): an incremental UTF-8 decoder."""

    def __init__(self, piece):
        self.piece = piece  # token id -> bytes
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self.utf8.decode(self.piece(token))

    def flush(self) -> str:
        return self.utf8.decode(b"", final=True)


def set_gguf_threads(llama, threads: int) -> None:
    """Use `threads` for prompt batches too (llama-cpp-python defaults those to every core)."""
    import llama_cpp

    llama_cpp.llama_set_n_threads(llama.ctx, threads, threads)
    llama.n_threads = llama.n_threads_batch = threads


class Generator:
    """Streams replies for one LoadedModel; HF models keep their KV cache between calls."""

    def __init__(self, model, n_ctx: int, stop_ids: set[int] | None = None):
        self.model = model
        self.n_ctx = n_ctx
        self.stop_ids = set(model.eos_ids if stop_ids is None else stop_ids)
        self.stats = Stats()
        self._cache = None  # HF: KV cache of self._cached_ids
        self._cached_ids: list[int] = []
        self.last_tokens: list[int] = []  # the last reply's token ids, stop token excluded

    def text_stream(self, context: list[int]):
        return self.model.text_stream(context)

    def stream(self, prompt_ids: list[int], s: Sampling,
               interrupted: Callable[[], bool] = lambda: False) -> Iterator[str]:
        """Yield the reply's text as it is generated; self.stats describes it once the iterator ends.

        interrupted() is asked after every token: once it is true the reply ends there (stop ==
        "interrupted"), so a reply stops within one token of it whatever the speed. A KeyboardInterrupt
        also propagates after stats are set (stop == "interrupted").
        """
        s.check()
        if len(prompt_ids) >= self.n_ctx:
            raise UsageError(f"the prompt is {len(prompt_ids)} tokens; the context holds {self.n_ctx}")
        self.stats = stats = Stats(prompt_tokens=len(prompt_ids))
        tokens = self.model.tokens(self, prompt_ids, s)
        text = self.text_stream(prompt_ids)
        self.last_tokens = generated = []
        start = time.perf_counter()
        try:
            for token in tokens:
                if not generated:
                    stats.first_token_s = time.perf_counter() - start
                if token in self.stop_ids:
                    stats.stop = "eos"
                    break
                generated.append(token)
                stats.new_tokens = len(generated)
                piece = text.push(token)
                if piece:
                    yield piece
                if interrupted():
                    stats.stop = "interrupted"
                    break
                if len(generated) >= s.max_new_tokens:
                    stats.stop = "length"
                    break
                if len(prompt_ids) + len(generated) >= self.n_ctx:
                    stats.stop = "context"
                    break
            tail = text.flush()
            if tail:
                yield tail
        except KeyboardInterrupt:
            stats.stop = "interrupted"
            raise
        finally:
            tokens.close()
            stats.total_s = time.perf_counter() - start

    # --- HF backend (GGUF generates in llama.cpp: runtime.load.GGUFModel.tokens) --------------------
    def _reuse_cache(self, prompt_ids: list[int]):
        """(cache, n) with the KV cache cropped to the first n prompt tokens it already holds."""
        common = 0
        for a, b in zip(self._cached_ids, prompt_ids):
            if a != b:
                break
            common += 1
        common = min(common, len(prompt_ids) - 1)  # at least one token to run for fresh logits
        cache, self._cache, self._cached_ids = self._cache, None, []
        if cache is None or common == 0:
            return None, 0  # the model starts a fresh cache
        cache.crop(common)
        return cache, common

    def hf_tokens(self, prompt_ids: list[int], s: Sampling) -> Iterator[int]:
        """Token ids from a transformers model, one per step, the stop token included."""
        model, device = self.model.model, self.model.device
        cache, done = self._reuse_cache(prompt_ids)
        generator = None
        if s.seed is not None:
            generator = torch.Generator(device=device).manual_seed(s.seed)
        fed, feed, generated = prompt_ids[:done], prompt_ids[done:], []
        while True:
            # A forward pass grows the cache in place: it only counts once the pass completed
            # (Ctrl-C may land inside one), and stays valid if the caller stops after a token.
            self._cache, self._cached_ids = None, []
            with torch.inference_mode():  # not around the yield: the mode would leak into the caller
                out = model(input_ids=torch.tensor([feed], device=device), past_key_values=cache,
                            use_cache=True, logits_to_keep=1)
                cache, fed = out.past_key_values, fed + feed
                self._cache, self._cached_ids = cache, fed
                token = sample_token(out.logits[0, -1], generated, s, generator)
            generated.append(token)
            yield token
            feed = [token]
