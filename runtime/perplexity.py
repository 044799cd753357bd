"""Perplexity of any MiniCPM artifact on a text, with its standard error, peak memory and speed;
and next-token agreement (KL, top-1) between two artifacts scored on the same token ids.

How a text is scored (every token exactly once):
- The text is tokenized once per tokenizer, without BOS. Each window the model sees is the tokenizer's
  BOS (when it has one) followed by text tokens, at most `ctx` tokens in all.
- Non-overlapping windows (the default, stride = ctx) score all `ctx` tokens they predict. With
  `stride` < ctx, windows slide by `stride` tokens and only the new tokens of each are scored, each with
  ctx - stride tokens of context or more.
- perplexity = exp(mean nll); its standard error by the delta method: ppl * std(nll) / sqrt(n).

Models are checked and tokenized first (tokenizers only, cheap), so bad input is reported before any
model is loaded; then each model is loaded, scored and freed in turn while its peak memory is measured.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import io
import math
import resource
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from converters.checkpoint import model_folder, read_json
from converters.errors import UsageError, UserError
from converters.gguf_read import gguf_metadata, is_gguf
from converters.tensors import BF16, F32, resolve_dtype as resolve_dtype_name
from converters.describe import disk_size as size_on_disk

# progress(label, total_tokens) -> context manager yielding advance(n_tokens)
Progress = Callable[[str, int], ContextManager[Callable[[int], None]]]


@contextlib.contextmanager
def _no_progress(label: str, total: int):
    yield lambda n: None


# --- datasets ------------------------------------------------------------------------------------
WIKITEXT_SUFFIXES = (".parquet", ".arrow", ".raw")


def load_text(dataset: str | Path, split: str = "test") -> tuple[str, str]:
    """(text, description) for --dataset.

    `wikitext2` (the hub), a WikiText-style table (.parquet/.arrow with a `text` column, a .raw file, or a
    folder holding one file per split) joined the standard way by calib_data, or any other text file as is.
    """
    from calib_data import load_wikitext2_text

    path = Path(dataset)
    if not path.exists() and str(dataset).lower().replace("-", "") == "wikitext2":
        return load_wikitext2_text(split), f"wikitext-2 {split}"
    if not path.exists():
        raise UsageError(f"--dataset {dataset}: no such file or directory "
                         "(expected wikitext2, a .parquet/.arrow/.raw file, a folder of those, or a text file)")
    if path.is_dir() or path.suffix in WIKITEXT_SUFFIXES:
        text = load_wikitext2_text(split, path)
        return text, (f"{path.name} {split}" if path.is_dir() else path.name)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"--dataset {path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise UserError(f"--dataset {path}: cannot be read ({exc.strerror or exc})") from None
    if not text.strip():
        raise UserError(f"--dataset {path}: holds no text")
    return text, path.name


# --- windows ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """The model sees prefix + ids[begin:stop-1] and is scored on ids[first:stop]."""
    begin: int
    first: int
    stop: int

    @property
    def scored(self) -> int:
        return self.stop - self.first


def windows(n_tokens: int, ctx: int, stride: int | None = None, bos: bool = True) -> list[Window]:
    """Windows of at most `ctx` model inputs that score each of `n_tokens` text tokens once.

    With a BOS prefix every text token can be scored (the first is predicted from BOS alone); without
    one the first text token cannot, and windows overlap by the one token that predicts the next.
    """
    step = stride or ctx
    if not 1 <= step <= ctx:
        raise UsageError(f"--stride {stride}: must be between 1 and --ctx ({ctx})")
    prefix = 1 if bos else 0
    out, first = [], 1 - prefix
    while first < n_tokens:
        stop = min(first + step, n_tokens)
        out.append(Window(max(0, stop - 1 - ctx + prefix), first, stop))
        first = stop
    return out


def tokens_per_window(ctx: int, bos: bool) -> int:
    """Text tokens one full window needs."""
    return ctx if bos else ctx + 1


def ppl_stderr(nll: np.ndarray) -> tuple[float, float]:
    """Perplexity and its standard error (delta method: d exp(m) = exp(m) dm, dm = std/sqrt(n))."""
    nll = np.asarray(nll, dtype=np.float64)
    ppl = math.exp(nll.mean())
    return ppl, ppl * float(nll.std()) / math.sqrt(len(nll))


# --- models: check, tokenize, load ----------------------------------------------------------------
def check_model_path(path: Path) -> None:
    """One clear error for a MODEL argument that cannot be a model."""
    if not path.exists():
        raise UsageError(f"{path}: no such file or directory")
    if path.is_dir():
        model_folder(path)
        return
    if is_gguf(path):
        return
    if path.suffix != ".gguf":
        raise UsageError(f"{path}: not a model (expected a model folder with config.json, or a .gguf file)")
    raise UsageError(f"{path}: not a GGUF file (bad magic)")


def declared_max_positions(path: Path) -> int:
    """The longest context a model declares (0 when it does not say)."""
    if path.is_dir():
        return int(read_json(path / "config.json").get("max_position_embeddings") or 0)
    meta = gguf_metadata(path)  # a damaged file is one clear error
    arch = meta.get("general.architecture", "llama")
    return int(meta.get(f"{arch}.context_length", 0))


class Encoder:
    """Text -> ids through a model's own tokenizer (HF for folders, llama.cpp's for GGUF)."""

    def __init__(self, path: Path):
        self.path = path
        if path.is_dir():
            from converters.tokenizer import load_tokenizer

            self.tokenizer = load_tokenizer(path)
            self.vocab_size = len(self.tokenizer)
            self._encode = lambda text, bos: self.tokenizer(text, add_special_tokens=bos, verbose=False)["input_ids"]
        else:
            from llama_cpp import Llama

            gguf_metadata(path)  # sizes llama.cpp would abort on are one clear error first
            from runtime.load import llama_cpp_errors, llama_cpp_reason

            try:  # llama-cpp-python 0.3 prints llama.cpp warnings even with verbose=False: hush them here
                with contextlib.redirect_stderr(io.StringIO()), llama_cpp_errors() as errors:
                    llama = Llama(str(path), vocab_only=True, verbose=False)
            except Exception as exc:
                raise UserError(f"{path}: llama.cpp cannot read this GGUF ({llama_cpp_reason(errors, exc)})") from None
            self.vocab_size = llama.n_vocab()
            self._encode = lambda text, bos: llama.tokenize(text.encode("utf-8"), add_bos=bos, special=True)
            self._llama = llama
        self.prefix = list(self._encode("", True))[:1]  # the BOS this tokenizer starts a sequence with

    def close(self) -> None:
        """Free llama.cpp's vocabulary now (its finalizer fails if left to interpreter shutdown)."""
        if getattr(self, "_llama", None) is not None:
            self._llama.close()
            self._llama = None

    def text_ids(self, text: str, limit: int | None = None) -> list[int]:
        """Ids of `text` without BOS; with a limit, of just enough of its start to give `limit` tokens.

        A prefix cut at a line end is tokenized, with a margin of tokens past the limit, so the first
        `limit` ids are those of the whole text.
        """
        chars = max(1 << 14, 8 * (limit or 0))
        while limit is not None and chars < len(text):
            cut = text.rfind("\n", 0, chars) + 1 or chars
            ids = self._encode(text[:cut], False)
            if len(ids) >= limit + 64:
                return list(ids)
            chars *= 2
        return list(self._encode(text, False))


@dataclass
class Prepared:
    """A model argument checked and its text tokenized, before any weights are loaded."""
    path: Path
    prefix: list[int]
    ids: list[int]
    vocab_size: int
    ids_group: int = 0  # models with the same group scored the same ids
    tokenizer: object = None  # folders: the HF tokenizer, loaded once and reused by the model


def prepare(paths: list[Path], text: str, ctx: int, stride: int | None, max_tokens: int | None
            ) -> tuple[list[Prepared], list[str]]:
    """Check every model and tokenize the text with each tokenizer; (prepared, warnings)."""
    for path in paths:
        check_model_path(path)
    for path in paths:
        limit = declared_max_positions(path)
        if limit and ctx > limit:
            raise UsageError(f"--ctx {ctx} is beyond {path}'s maximum position ({limit}); use --ctx {limit} or less")
    if stride is not None and not 1 <= stride <= ctx:
        raise UsageError(f"--stride {stride}: must be between 1 and --ctx ({ctx})")
    prepared: list[Prepared] = []
    encoders: dict[Path, Encoder] = {}
    try:
        for path in paths:
            if path.resolve() not in encoders:
                encoders[path.resolve()] = Encoder(path)
            prepared.append(tokenize(encoders[path.resolve()], text, ctx, max_tokens))
            prepared[-1].path = path
            prepared[-1].tokenizer = getattr(encoders[path.resolve()], "tokenizer", None)
    finally:
        for enc in encoders.values():
            enc.close()
    warnings = []
    groups: list[Prepared] = []
    for p in prepared:
        same = next((i for i, g in enumerate(groups) if g.prefix == p.prefix and g.ids == p.ids), None)
        if same is None:
            for g in groups:
                if g.vocab_size == p.vocab_size:
                    warnings.append(f"{g.path} and {p.path} have the same vocabulary size ({p.vocab_size}) "
                                    f"but tokenize the text differently ({first_difference(g, p)}); "
                                    "their perplexities are not comparable")
            groups.append(p)
            same = len(groups) - 1
        p.ids_group = same
    return prepared, warnings


def tokenize(enc: Encoder, text: str, ctx: int, max_tokens: int | None) -> Prepared:
    """The ids a model scores: at most max_tokens, and at least one full window."""
    found = enc.text_ids(text, max_tokens)
    ids = found[: max_tokens + 1 - len(enc.prefix)] if max_tokens else found
    need = tokens_per_window(ctx, bool(enc.prefix))
    if len(ids) < need:
        why = f"--max-tokens {max_tokens} leaves" if len(ids) < len(found) else "the dataset has"
        raise UserError(f"{why} {len(ids)} tokens with {enc.path}'s tokenizer, fewer than one window "
                        f"of --ctx {ctx} ({need} tokens); use a smaller --ctx or more text", code=2)
    return Prepared(enc.path, enc.prefix, ids, enc.vocab_size)


def first_difference(a: Prepared, b: Prepared) -> str:
    x, y = a.prefix + a.ids, b.prefix + b.ids
    i = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
    if i < min(len(x), len(y)):
        return f"first difference at token {i}: {x[i]} vs {y[i]}"
    return f"{len(x)} vs {len(y)} tokens"


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """auto: float32 on CPU (exact, and bf16 matmuls are slow on most CPUs), bf16 on CUDA."""
    return resolve_dtype_name(dtype, BF16 if device == "cuda" else F32).torch


def default_threads() -> int:
    return torch.get_num_threads()


def import_backends(paths: list[Path]) -> None:
    """Import and warm the code a load will need, so that a model's measured memory is not the libraries'."""
    folders = [p for p in paths if p.is_dir()]
    if folders:
        from transformers import LlamaConfig, LlamaForCausalLM, MiniCPM3ForCausalLM, MixtralForCausalLM  # noqa: F401

        # torch and transformers set up kernels, thread pools and caches on the first load and forward
        # (~20 MB on CPU), which would otherwise be charged to the first model of the table
        config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=2)
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            LlamaForCausalLM(config).save_pretrained(tmp)
            model = LlamaForCausalLM.from_pretrained(tmp).eval()
            model(input_ids=torch.zeros(1, 256, dtype=torch.long), use_cache=False)
    if any(read_json(p / "config.json").get("quantization_config") for p in folders):
        with contextlib.suppress(ImportError):
            import compressed_tensors  # noqa: F401

            from converters.quiet import quiet

            with quiet():  # imports the modules whose bars it silences
                pass


def load(path: Path, device: str, ctx: int, dtype: torch.dtype, threads: int | None = None, tokenizer=None):
    from runtime.load import open_model

    return open_model(path, device, n_ctx=ctx, dtype=dtype, threads=threads or default_threads(), tokenizer=tokenizer)


# --- scoring -------------------------------------------------------------------------------------------
def window_logits(model, inputs: list[list[int]], keep: int) -> torch.Tensor:
    """Logits [B, keep, V] at the last `keep` positions of equal-length inputs (see LoadedModel.window_logits)."""
    return model.window_logits(inputs, keep)


def _chunks(logits: torch.Tensor) -> Iterator[slice]:
    """Position slices whose float32 log-softmax stays near 64 MB, whatever the vocabulary."""
    step = max(1, (1 << 24) // (logits.shape[0] * logits.shape[-1]))
    for i in range(0, logits.shape[1], step):
        yield slice(i, i + step)


def batches(wins: list[Window], batch_size: int) -> Iterator[list[Window]]:
    """Consecutive windows of identical shape, at most batch_size at a time."""
    group: list[Window] = []
    for w in wins:
        if group and (len(group) == batch_size or (w.stop - w.begin, w.scored) !=
                      (group[0].stop - group[0].begin, group[0].scored)):
            yield group
            group = []
        group.append(w)
    if group:
        yield group


def score(model, prep: Prepared, ctx: int, stride: int | None, batch_size: int = 1,
          advance: Callable[[int], None] = lambda n: None) -> np.ndarray:
    """Negative log-likelihood (nats, float64) of every scored token, in text order."""
    ids, out = prep.ids, []
    for group in batches(windows(len(ids), ctx, stride, bool(prep.prefix)), batch_size):
        keep = group[0].scored
        logits = window_logits(model, [prep.prefix + ids[w.begin: w.stop - 1] for w in group], keep)
        targets = torch.tensor([ids[w.first: w.stop] for w in group], device=logits.device)
        parts = []
        for s in _chunks(logits):
            part = logits[:, s].float()
            nll = F.cross_entropy(part.reshape(-1, part.shape[-1]), targets[:, s].reshape(-1), reduction="none")
            parts.append(nll.view(len(group), -1))
        out.append(torch.cat(parts, 1).reshape(-1).double().cpu())  # row-major: windows in text order
        advance(keep * len(group))
    return torch.cat(out).numpy()


# --- memory ------------------------------------------------------------------------------------------
def _status_bytes(field_name: str) -> int | None:
    """A `VmXXX:  123 kB` line of /proc/self/status, in bytes (None off Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_memory() -> None:
    """Give freed memory back to the OS so that the next model's growth is measured from a clean base."""
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class PeakMemory:
    """How far memory rose above its level at entry while the block ran.

    CPU: the process's resident set; Linux keeps its peak (VmHWM) and lets us reset it to now, so the
    peak is exact. Where the reset is refused, RSS is sampled every 5 ms instead. CUDA: the torch
    allocator's peak, plus `device_used()` samples for memory that torch does not see (llama.cpp).
    """

    def __init__(self, cuda: bool = False):
        self.cuda = cuda
        self.rss_growth = self.cuda_growth = self.device_growth = 0
        self.peak_rss = 0

    def __enter__(self) -> "PeakMemory":
        release_memory()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._cuda_base = torch.cuda.memory_allocated()
            self._device_base = self._device_used()
        self._base = _status_bytes("VmRSS")
        self._exact = self._base is not None and _reset_peak_rss()
        self._samples: list[int] = []
        if self._base is None:  # not Linux: the lifetime peak only grows, a lower bound of ours
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        elif not self._exact:
            self._stop = threading.Event()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._samples.append(_status_bytes("VmRSS") or 0)

    @staticmethod
    def _device_used() -> int:
        free, total = torch.cuda.mem_get_info()
        return total - free

    def sample_device(self) -> None:
        """Note device memory in use now (call at the busiest moment of a non-torch backend)."""
        if self.cuda:
            self.device_growth = max(self.device_growth, self._device_used() - self._device_base)

    def __exit__(self, *exc) -> None:
        if self._exact:
            self.peak_rss = _status_bytes("VmHWM") or 0
        elif hasattr(self, "_sampler"):
            self._stop.set()
            self._sampler.join()
            self.peak_rss = max(self._samples + [_status_bytes("VmRSS") or 0])
        else:
            self.peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        self.rss_growth = max(0, self.peak_rss - self._base)
        if self.cuda:
            torch.cuda.synchronize()
            self.cuda_growth = torch.cuda.max_memory_allocated() - self._cuda_base


# --- evaluation ------------------------------------------------------------------------------------------
@dataclass
class ModelResult:
    model: str
    backend: str
    family: str
    weights: str  # f32/bf16 (HF), a quantization method (bitsandbytes, compressed-tensors), a GGUF type
    ppl: float
    stderr: float
    tokens: int
    windows: int
    seconds: float
    tokens_per_s: float
    peak_mem_bytes: int
    peak_mem_kind: str  # "rss": resident-set growth; "cuda": GPU memory growth
    peak_rss_bytes: int
    size_bytes: int
    ids_group: int
    delta_pct: float | None = None  # vs the first model, when scored on the same ids
    delta_pct_stderr: float | None = None
    nll: np.ndarray = field(default=None, repr=False, metadata={"json": False})


@dataclass
class Evaluation:
    results: list[ModelResult]
    warnings: list[str]
    ctx: int
    stride: int | None
    device: str


def evaluate(paths: list[Path | str], text: str, ctx: int = 2048, stride: int | None = None,
             max_tokens: int | None = None, batch_size: int = 1, device: str = "auto", dtype: str = "auto",
             threads: int | None = None, progress: Progress = _no_progress) -> Evaluation:
    """Perplexity ± stderr, tokens/s, peak memory and size of each model, on its tokenizer's ids."""
    from runtime.load import resolve_device

    paths = [Path(p) for p in paths]
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if threads:
        torch.set_num_threads(threads)
    prepared, warnings = prepare(paths, text, ctx, stride, max_tokens)
    import_backends(paths)
    results = []
    for prep in prepared:
        n_windows = len(windows(len(prep.ids), ctx, stride, bool(prep.prefix)))
        total = len(prep.ids) - (0 if prep.prefix else 1)
        with PeakMemory(cuda=device == "cuda") as mem:
            model = load(prep.path, device, ctx, torch_dtype, threads, prep.tokenizer)
            with progress(prep.path.name, total) as advance:
                start = time.perf_counter()
                nll = score(model, prep, ctx, stride, batch_size, advance)
                seconds = time.perf_counter() - start
            mem.sample_device()
        ppl, err = ppl_stderr(nll)
        if not math.isfinite(ppl):
            warnings.append(f"{prep.path}: perplexity is {ppl} (NaN or infinite logits: damaged weights?)")
        peak, peak_kind = model.peak_memory(mem)
        results.append(ModelResult(
            str(prep.path), model.backend, model.family, model.weights_format(torch_dtype), ppl, err, len(nll), n_windows,
            seconds, len(nll) / seconds, peak, peak_kind, mem.peak_rss,
            size_on_disk(prep.path), prep.ids_group, nll=nll))
        del model
        release_memory()
    first = results[0]
    for r in results:
        if r.ids_group == first.ids_group:
            r.delta_pct, r.delta_pct_stderr = paired_delta_pct(first.nll, r.nll)
    return Evaluation(results, warnings, ctx, stride, device)


def paired_delta_pct(reference: np.ndarray, nll: np.ndarray) -> tuple[float, float]:
    """ppl change vs the reference in %, with its standard error from the per-token differences.

    Both models scored the same tokens, so the difference is far more certain than either perplexity:
    ppl / ppl_ref = exp(mean(nll - nll_ref)), and the delta method again gives its error.
    """
    d = nll - reference
    ratio = math.exp(d.mean())
    return 100.0 * (ratio - 1.0), 100.0 * ratio * float(d.std()) / math.sqrt(len(d))


# --- comparison -----------------------------------------------------------------------------------------
@dataclass
class Comparison:
    a: str
    b: str
    tokens: int
    kl_mean: float
    kl_p99: float
    kl_max: float
    top1_agreement: float
    max_abs_logit_diff: float
    ppl_a: float
    stderr_a: float
    ppl_b: float
    stderr_b: float
    seconds: float
    note: str | None = None


def compare(a: Path | str, b: Path | str, text: str, ctx: int = 2048, stride: int | None = None,
            max_tokens: int | None = None, batch_size: int = 1, device: str = "auto", dtype: str = "auto",
            threads: int | None = None, progress: Progress = _no_progress) -> Comparison:
    """Next-token agreement of B with A on the same ids: KL(A||B) per token, top-1 agreement, max |Δlogit|."""
    from runtime.load import resolve_device

    a, b = Path(a), Path(b)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if threads:
        torch.set_num_threads(threads)
    (pa, pb), _ = prepare([a, b], text, ctx, stride, max_tokens)
    if (pa.prefix, pa.ids) != (pb.prefix, pb.ids):
        raise UserError(f"--compare: {a} and {b} tokenize the text differently ({first_difference(pa, pb)}); "
                        "comparing next-token distributions needs the same token ids")
    ma = load(a, device, ctx, torch_dtype, threads, pa.tokenizer)
    mb = load(b, device, ctx, torch_dtype, threads, pb.tokenizer)
    ids, kl, agree, nll_a, nll_b = pa.ids, [], 0, [], []
    max_diff, note = 0.0, None
    wins = windows(len(ids), ctx, stride, bool(pa.prefix))
    start = time.perf_counter()
    with progress(f"{a.name} vs {b.name}", sum(w.scored for w in wins)) as advance:
        for group in batches(wins, batch_size):
            keep = group[0].scored
            inputs = [pa.prefix + ids[w.begin: w.stop - 1] for w in group]
            la, lb = window_logits(ma, inputs, keep), window_logits(mb, inputs, keep)
            if la.shape[-1] != lb.shape[-1]:  # e.g. a vocabulary padded in one artifact only
                note = f"logit widths differ ({la.shape[-1]} vs {lb.shape[-1]}): compared on the first {min(la.shape[-1], lb.shape[-1])}"
            vocab = min(la.shape[-1], lb.shape[-1])
            targets = torch.tensor([ids[w.first: w.stop] for w in group])
            for s in _chunks(la):
                x = la[:, s, :vocab].float().cpu()
                y = lb[:, s, :vocab].float().cpu()
                lpa, lpb = x.log_softmax(-1), y.log_softmax(-1)
                kl.append((lpa.exp() * (lpa - lpb)).sum(-1).double().reshape(-1))
                agree += int((x.argmax(-1) == y.argmax(-1)).sum())
                max_diff = max(max_diff, float((x - y).abs().max()))
                t = targets[:, s, None]
                nll_a.append(-lpa.gather(-1, t).double().reshape(-1))
                nll_b.append(-lpb.gather(-1, t).double().reshape(-1))
            advance(keep * len(group))
    seconds = time.perf_counter() - start
    kl_all = torch.cat(kl).clamp_min(0).numpy()  # rounding can leave -1e-9 where the distributions agree
    ppl_a, err_a = ppl_stderr(torch.cat(nll_a).numpy())
    ppl_b, err_b = ppl_stderr(torch.cat(nll_b).numpy())
    return Comparison(str(a), str(b), len(kl_all), float(kl_all.mean()), float(np.percentile(kl_all, 99)),
                      float(kl_all.max()), agree / len(kl_all), max_diff, ppl_a, err_a, ppl_b, err_b, seconds, note)
