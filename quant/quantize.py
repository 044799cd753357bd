"""`minicpm quantize`: a MiniCPM (or Llama/Mixtral) folder -> a quantized folder transformers loads as is.

- awq / gptq: llm-compressor on calibration rows from `calib_data`, saved as compressed-tensors
  (what vLLM and transformers read natively).
- bnb: bitsandbytes nf4/fp4 (4-bit) or LLM.int8 (8-bit), no calibration, saved by transformers.

MiniCPM 1/2/4 and MiniCPM-MoE are folded to Llama/Mixtral in memory first, so OUT needs no remote
code; MiniCPM3 is quantized as transformers' native `minicpm3` (the family decides: converters.families).

Three phases: `prepare` (options, OUT, checkpoint and calibration text checked; nothing computed),
the method's `quantize` (calibrating where it does), then `save` (weights, tokenizer, card) inside
OUT's atomic temporary. A method is one `METHODS` entry: its bits, format, option checks, scheme
name, quantize and save phases, and notes.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from converters.atomic import atomic_output, check_output
from converters.checkpoint import Checkpoint, model_folder, read_config
from converters.errors import UsageError, UserError
from converters.shapes import check_checkpoint
from converters.tensors import F32, declared_dtype, resolve_dtype

from converters.quiet import quiet

DEFAULT_GROUP_SIZE = 128
BNB_BLOCK = 64  # bitsandbytes' 4-bit block: layers narrower than a multiple of it do not reload

# progress(description, total) -> advance(): how a stage reports work to the CLI's bar.
Progress = Callable[[str, int], Callable[[], None]]


@dataclass
class QuantizeOptions:
    method: str
    bits: int = 4
    group_size: int | None = None  # awq/gptq; default 128, -1 = one scale per output channel
    calib: str = "wikitext2"
    num_samples: int = 128
    seq_len: int = 512
    sym: bool | None = None  # default: asymmetric for AWQ (zero point, as AutoAWQ), symmetric for GPTQ
    act_order: bool | None = None  # gptq; default on ("weight" order: better accuracy, same format)
    bnb_type: str | None = None  # bnb 4-bit: nf4 (default) or fp4
    double_quant: bool | None = None  # bnb 4-bit: also quantize the block scales
    ignore: tuple[str, ...] = ("lm_head",)
    device: str = "auto"
    seed: int = 0
    dtype: str = "auto"  # the weights quantization starts from; auto = the checkpoint's own


@dataclass
class QuantizeResult:
    source: str
    output: str
    source_family: str
    architecture: str
    method: str
    bits: int
    format: str
    group_size: int | None
    symmetric: bool | None
    scheme: str
    device: str
    dtype: str
    quantized_layers: int
    bytes_before: int
    bytes_after: int
    seconds: float
    calibration: dict | None = None
    layer_seconds: list[float] = field(default_factory=list)  # awq/gptq: each decoder layer after the first
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def resolve_options(opts: QuantizeOptions, moe: bool = False) -> QuantizeOptions:
    """Check the options against each other and fill in the method's defaults."""
    method = opts.method
    if method not in METHODS:
        raise UsageError(f"--method {method}: unknown method (expected awq, gptq or bnb)")
    if opts.bits not in METHODS[method].bits:
        can = " or ".join(str(b) for b in METHODS[method].bits)
        raise UsageError(f"--bits {opts.bits}: {method} can do {can} bits")
    return METHODS[method].resolve(opts, moe)


def _resolve_bnb(opts: QuantizeOptions, moe: bool) -> QuantizeOptions:
    for flag, value in (("--group-size", opts.group_size), ("--act-order", opts.act_order), ("--sym/--asym", opts.sym)):
        if value is not None:
            raise UsageError(f"{flag} does not apply to bnb (bitsandbytes uses fixed blocks of {BNB_BLOCK} weights)")
    if opts.bits == 8 and (opts.bnb_type is not None or opts.double_quant is not None):
        raise UsageError("--bnb-type and --double-quant apply to 4-bit bnb only (8-bit is LLM.int8)")
    bnb_type = opts.bnb_type or "nf4"
    if bnb_type not in ("nf4", "fp4"):
        raise UsageError(f"--bnb-type {bnb_type}: expected nf4 or fp4")
    return replace(opts, bnb_type=bnb_type if opts.bits == 4 else None, double_quant=bool(opts.double_quant))


def _resolve_llmc(opts: QuantizeOptions, moe: bool) -> QuantizeOptions:
    method = opts.method
    if opts.bnb_type is not None or opts.double_quant is not None:
        raise UsageError(f"--bnb-type and --double-quant apply to bnb, not {method}")
    if method == "awq" and opts.act_order is not None:
        raise UsageError("--act-order applies to gptq, not awq")
    group_size = DEFAULT_GROUP_SIZE if opts.group_size is None else opts.group_size
    if group_size == 0 or group_size < -1:
        raise UsageError(f"--group-size {group_size}: expected a positive size, or -1 for one scale per output channel")
    if opts.num_samples < 1:
        raise UsageError(f"--num-samples {opts.num_samples}: must be at least 1")
    if opts.seq_len < 2:
        raise UsageError(f"--seq-len {opts.seq_len}: must be at least 2")
    if moe and opts.sym is False:
        # transformers 5.17 rebuilds fused MoE experts from per-expert weights and scales only;
        # zero points are dropped and the experts fail to load.
        raise UsageError("--asym: asymmetric MoE experts do not reload in transformers; use --sym for MoE models")
    sym = (method == "gptq" or moe) if opts.sym is None else opts.sym
    act_order = (True if opts.act_order is None else opts.act_order) if method == "gptq" else None
    return replace(opts, group_size=group_size, sym=sym, act_order=act_order)


def check_group_size(opts: QuantizeOptions, config: dict, family) -> None:
    widths = family.layer_widths(config)
    if opts.method == "bnb":
        if opts.bits == 4:
            for what, n in widths.items():
                if n % BNB_BLOCK:
                    raise UserError(f"bnb 4-bit needs layer widths that are multiples of {BNB_BLOCK}; "
                                    f"the {what} is {n} (use --bits 8, awq or gptq)", code=2)
        return
    if opts.group_size > 0:
        for what, n in widths.items():
            if n % opts.group_size:
                fits = [g for g in (32, 64, 128, 256) if all(w % g == 0 for w in widths.values())]
                hint = f"; try {', '.join(map(str, fits))}" if fits else "; try -1 (per channel)"
                raise UsageError(f"--group-size {opts.group_size} does not divide the {what} {n}{hint}")


def weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir()
               if p.is_file() and (p.suffix in (".safetensors", ".bin", ".pt", ".pth")))


def source_dtype(config: dict, choice: str) -> torch.dtype:
    """auto: the dtype config.json declares, else float32."""
    return resolve_dtype(choice, declared_dtype(config) or F32).torch


def quantized_layer_count(model) -> int:
    count = 0
    for module in model.modules():
        if getattr(module, "quantization_scheme", None) is not None:
            count += 1
        elif type(module).__name__ in ("Linear4bit", "Linear8bitLt"):
            count += 1
    return count


def describe(opts: QuantizeOptions) -> str:
    return METHODS[opts.method].describe(opts)


def _describe_bnb(opts: QuantizeOptions) -> str:
    return f"bnb {opts.bnb_type}{' double-quant' if opts.double_quant else ''}" if opts.bits == 4 else "bnb int8 (LLM.int8)"


def _describe_llmc(opts: QuantizeOptions) -> str:
    group = "per-channel" if opts.group_size < 0 else f"g{opts.group_size}"
    order = ", act-order" if opts.act_order else ""
    return f"{opts.method} W{opts.bits}A16 {group} {'sym' if opts.sym else 'asym'}{order}"


def ignore_list(opts: QuantizeOptions, family, llmc_names: bool) -> list[str]:
    """Modules left in float: --ignore, plus what the family needs in float (MoE routers)."""
    return list(opts.ignore) + family.float_modules(llmc_names)


def write_card(folder: Path, result: QuantizeResult, opts: QuantizeOptions) -> None:
    info = {"method": result.method, "bits": result.bits, "format": result.format, "scheme": result.scheme,
            "group_size": result.group_size, "symmetric": result.symmetric, "ignore": list(opts.ignore),
            "calibration": result.calibration, "source": result.source, "source_family": result.source_family,
            "architecture": result.architecture, "dtype": result.dtype, "quantized_layers": result.quantized_layers,
            "notes": result.notes, "tool": "minicpm quantize"}
    (folder / "quantization.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    calib = result.calibration
    rows = [("method", result.method), ("bits", result.bits), ("format", result.format), ("scheme", result.scheme),
            ("group size", result.group_size if result.group_size is not None else "64 (bitsandbytes block)" if result.bits == 4 else "per row"),
            ("calibration set", calib["source"] if calib else "none (bitsandbytes needs no data)"),
            ("calibration samples", f"{calib['samples']} x {calib['seq_len']} tokens" if calib else "-"),
            ("source", f"{Path(result.source).name} ({result.source_family})"), ("architecture", result.architecture),
            ("left in float", ", ".join(opts.ignore) or "nothing")] + [("note", n) for n in result.notes]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    (folder / "README.md").write_text(
        f"# {Path(result.output).name}\n\n{Path(result.source).name} quantized by `minicpm quantize`. "
        f"Load it with `AutoModelForCausalLM.from_pretrained(path)` (no remote code).\n\n"
        f"| | |\n|---|---|\n{table}\n", encoding="utf-8")


def library_error(exc: Exception) -> str:
    """A library exception as one line: its type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def copy_tokenizer(src: Path, out: Path) -> None:
    from converters.tokenizer import copy_tokenizer_files

    copy_tokenizer_files(src, out)  # chat_template.jinja included


# --- the phases: prepare -> quantize (calibrating where the method does) -> save -----------------------
@dataclass
class Job:
    """A quantization checked and ready: everything the quantize and save phases need."""
    src: Path
    out: Path
    folder: Path
    config: dict
    family: object  # converters.families.Family
    opts: QuantizeOptions
    method: "Method"
    device: str
    dtype: torch.dtype
    calib: object = None  # calib_data samples (calibrated methods)
    calibration: dict | None = None  # what the card and the result say about them
    bytes_before: int = 0
    layer_ends: list[float] = field(default_factory=list)  # calibrated methods: when each decoder layer finished


def prepare(src: Path | str, out: Path | str, opts: QuantizeOptions, force: bool = False) -> Job:
    """Check options, OUT, the checkpoint and the calibration text before anything is computed."""
    from runtime.load import resolve_device

    src, out = Path(src), Path(out)
    resolve_options(opts)  # option errors first, before touching files
    check_output(out, force, "model", [src])
    folder = model_folder(src)
    config = read_config(folder)
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "some method")
        raise UsageError(f"{folder}: already quantized ({method}); quantize the float model instead")
    ckpt = Checkpoint(folder)
    check_checkpoint(ckpt)  # before calibration data is fetched or anything is computed
    for name in ckpt.names:  # one streaming read: a NaN/inf weight is an error before minutes of work
        ckpt.get(name)
    config, family = ckpt.config, ckpt.family  # with OpenBMB's defaults (v_head_dim, muP) filled in
    opts = resolve_options(opts, moe=family.moe)
    check_group_size(opts, config, family)
    job = Job(src, out, folder, config, family, opts, METHODS[opts.method], resolve_device(opts.device),
              source_dtype(config, opts.dtype), bytes_before=weight_bytes(folder))
    if job.method.calibrated:
        from calib_data import calibration_samples
        from converters.tokenizer import chat_template, load_tokenizer

        tokenizer = load_tokenizer(folder)
        job.calib = calibration_samples(opts.calib, tokenizer, opts.num_samples, opts.seq_len, opts.seed,
                                        chat_template(folder))
        job.calibration = {"source": job.calib.source, "samples": len(job.calib.samples), "seq_len": opts.seq_len,
                           "tokens": job.calib.tokens, "documents": job.calib.used_documents, "seed": opts.seed}
    return job


def _llmc_quantize(job: Job, tmp: Path, progress: Progress):
    """AWQ / GPTQ: llm-compressor calibrates and quantizes the loaded model layer by layer."""
    from runtime.load import load_hf

    from .llmc import oneshot_quantize

    opts = job.opts
    model = (loaded := load_hf(job.folder, "cpu", job.dtype)).model  # stays in CPU memory (see quant.llmc)
    advance = progress(f"{opts.method.upper()} {opts.bits}-bit: layers", model.config.num_hidden_layers)

    def on_layer():
        job.layer_ends.append(time.perf_counter())
        advance()

    try:
        return oneshot_quantize(model, loaded.tokenizer, job.calib.samples, opts.method, opts.bits,
                                opts.group_size, opts.sym, opts.act_order, ignore_list(opts, job.family, True),
                                tmp / ".config", on_layer, job.family.awq_mappings() if opts.method == "awq" else None,
                                job.device)
    except torch.OutOfMemoryError:
        raise UserError(f"out of memory while quantizing on {job.device} (try fewer --num-samples or a shorter --seq-len)") from None
    except (ValueError, RuntimeError, TypeError, AssertionError) as exc:
        raise UserError(f"{opts.method} on {job.family}: llm-compressor failed ({library_error(exc)})") from None


def _llmc_save(model, tmp: Path, job: Job) -> None:
    model.save_pretrained(tmp, save_compressed=True)
    shutil.rmtree(tmp / ".config", ignore_errors=True)
    if job.family.moe:  # in memory a Mixtral, whatever the source family
        from .llmc import classic_mixtral_names

        classic_mixtral_names(tmp)


def _bnb_quantize(job: Job, tmp: Path, progress: Progress):
    """bitsandbytes: transformers quantizes each Linear as it loads the float weights (no calibration)."""
    from runtime.load import load_hf

    from .bnb import bnb_quantize, linear_names

    opts = job.opts
    from converters.lora import is_view

    if job.family.folds_for_transformers or is_view(job.folder):
        float_folder = tmp / ".float"  # the folded (or --lora merged) model, for transformers to quantize
        load_hf(job.folder, "cpu", job.dtype).model.save_pretrained(float_folder)
        hf_config = None
    else:
        float_folder = job.folder
        hf_config = job.family.hf_config(job.config)
    skip = ignore_list(opts, job.family, False)
    targets = len(linear_names(float_folder, hf_config, skip))
    advance = progress(f"bnb {opts.bnb_type or 'int8'}: weights", targets)
    try:
        model = bnb_quantize(float_folder, opts.bits, opts.bnb_type, opts.double_quant, job.dtype, skip,
                             job.device, hf_config, lambda name: advance())
    except (ValueError, RuntimeError, TypeError, ImportError) as exc:
        raise UserError(f"bnb on {job.family}: bitsandbytes failed ({library_error(exc)})") from None
    shutil.rmtree(tmp / ".float", ignore_errors=True)
    return model


def _bnb_save(model, tmp: Path, job: Job) -> None:
    model.save_pretrained(tmp)


def _bnb_notes(job: Job) -> list[str]:
    if job.family.moe:
        return [f"MoE experts stay {str(job.dtype).replace('torch.', '')}: bitsandbytes quantizes Linear layers "
                "and transformers keeps Mixtral experts as fused tensors (use awq or gptq)"]
    return []


@dataclass(frozen=True)
class Method:
    """One quantization method: what it can do and its quantize and save phases."""
    bits: tuple[int, ...]
    format: str
    calibrated: bool
    resolve: Callable[[QuantizeOptions, bool], QuantizeOptions]  # check its options, fill its defaults
    describe: Callable[[QuantizeOptions], str]  # the scheme, as the table and the card show it
    quantize: Callable[[Job, Path, Progress], object]
    save: Callable[[object, Path, Job], None]
    notes: Callable[[Job], list[str]] = lambda job: []


METHODS = {
    "awq": Method((4, 8), "compressed-tensors", True, _resolve_llmc, _describe_llmc, _llmc_quantize, _llmc_save),
    "gptq": Method((4, 8), "compressed-tensors", True, _resolve_llmc, _describe_llmc, _llmc_quantize, _llmc_save),
    "bnb": Method((4, 8), "bitsandbytes", False, _resolve_bnb, _describe_bnb, _bnb_quantize, _bnb_save, _bnb_notes),
}


def save(job: Job, model, tmp: Path) -> QuantizeResult:
    """Write the quantized model, its tokenizer and its card into tmp; the result describes them."""
    opts = job.opts
    if (job.folder / "generation_config.json").is_file():
        # transformers 5 refuses to save a generation config it finds inconsistent (MiniCPM3-4B's
        # do_sample false with temperature 0.8); copy_tokenizer copies the published file after it
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_model_config(model.config)
    job.method.save(model, tmp, job)
    copy_tokenizer(job.folder, tmp)
    result = QuantizeResult(
        source=str(job.src), output=str(job.out), source_family=job.family.name,
        architecture=(model.config.architectures or [type(model).__name__])[0], method=opts.method,
        bits=opts.bits, format=job.method.format, group_size=opts.group_size, symmetric=opts.sym,
        scheme=describe(opts), device=job.device, dtype=str(job.dtype).replace("torch.", ""),
        quantized_layers=quantized_layer_count(model), bytes_before=job.bytes_before,
        bytes_after=weight_bytes(tmp), seconds=0.0, calibration=job.calibration,
        layer_seconds=[b - a for a, b in zip(job.layer_ends, job.layer_ends[1:])])
    calibration = job.calibration
    if calibration and calibration["samples"] < opts.num_samples:
        result.notes.append(f"the calibration text filled {calibration['samples']} of the "
                            f"{opts.num_samples} requested rows of {opts.seq_len} tokens")
    result.notes += job.method.notes(job)
    write_card(tmp, result, opts)
    result.files = sorted(p.name for p in tmp.iterdir())
    return result


def quantize(src: Path | str, out: Path | str, opts: QuantizeOptions, force: bool = False,
             progress: Progress | None = None, before_save: Callable[[object], None] | None = None) -> QuantizeResult:
    """Quantize SRC into OUT (atomically). `before_save(model)` sees the in-memory quantized model."""
    start = time.perf_counter()
    job = prepare(src, out, opts, force)
    progress = progress or (lambda description, total: (lambda: None))
    with atomic_output(job.out, force, "model", [job.folder]) as tmp, quiet():
        model = job.method.quantize(job, tmp, progress)
        if before_save is not None:
            before_save(model)
        result = save(job, model, tmp)
    result.seconds = time.perf_counter() - start
    return result

