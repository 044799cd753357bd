"""`--lora ADAPTER`: merge PEFT LoRA adapters into the base checkpoint while its tensors are read.

For a LoRA module on a Linear W [out, in] with A [r, in] and B [out, r],
    W' = W + s · B·A,    s = alpha / r   (alpha / sqrt(r) with use_rslora),
where r and alpha come from `rank_pattern` / `alpha_pattern` when a pattern names the module (PEFT's
rule: the first pattern that matches the end of the module name at a '.' boundary), else from `r` and
`lora_alpha`. An Embedding [num, dim] with lora_embedding_A [r, num] and lora_embedding_B [dim, r] gets
W' += s · (B·A)ᵀ. `modules_to_save` entries (e.g. a fine-tuned lm_head or embed_tokens) replace the base
tensor. DoRA (use_dora) on a Linear is merged exactly as PEFT does:
W' = (m / ‖W + s·B·A‖_row) · (W + s·B·A), m the learned magnitude per output row. Several adapters
apply in the order given, each on the result of the previous ones. The arithmetic is float32 and happens before muP
folding, so the folded model is exactly the folded merge.

Invariants:
- The base is MODEL. An adapter's `base_model_name_or_path` is reported, never opened.
- Everything is checked before any tensor is merged: PEFT type, every key's module exists in the base,
  every A/B/magnitude/saved shape agrees with the base tensor and the configured rank; unsupported
  variants (DoRA on embeddings, trained biases, layer replication, target_parameters) are refused.
- Streaming: a base tensor is merged when the converter reads it; adapter tensors are read lazily, so
  peak memory stays one base tensor plus that module's A and B.
- A tied base (lm_head = embed_tokens) keeps one shared tensor for LoRA deltas on either (PEFT merges
  into the shared parameter); a `modules_to_save` copy of either unties them (PEFT trains a copy).
- fan_in_fan_out is ignored for the Linear layers MiniCPM has, as PEFT does (it resets it to False).
"""
from __future__ import annotations

import contextlib
import math
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .checkpoint import SAFETENSORS_DTYPES, TensorInfo, read_json, safetensors_header
from .errors import UsageError, UserError
from .tensors import F32, DType

if TYPE_CHECKING:
    import torch

PREFIX = "base_model.model."
HEAD, EMBED = "lm_head.weight", "model.embed_tokens.weight"
# adapter_config.json keys that change the maths in ways this merge does not implement
UNSUPPORTED = {"layer_replication": "layer replication", "target_parameters": "target_parameters",
               "lora_bias": "LoRA biases", "trainable_token_indices": "trainable token indices"}


@dataclass
class Delta:
    """One LoRA module of one adapter, for one base tensor."""
    a: str  # adapter key of A
    b: str  # adapter key of B
    scaling: float
    embedding: bool  # lora_embedding_A/B: the delta is transposed
    magnitude: str | None = None  # DoRA: adapter key of the magnitude vector m [out]


@dataclass
class Adapter:
    path: Path
    weights: Path
    config: dict
    deltas: dict[str, Delta] = field(default_factory=dict)  # base tensor name -> delta
    saved: dict[str, str] = field(default_factory=dict)  # base tensor name -> adapter key of its replacement
    _info: dict[str, TensorInfo] = field(default_factory=dict)
    _bin: dict | None = None

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    def tensor(self, key: str) -> torch.Tensor:
        if self.weights.suffix == ".bin":
            return self._bin[key]
        from safetensors import safe_open

        with safe_open(self.weights, "pt") as f:
            return f.get_tensor(key)


# --- reading and checking an adapter -------------------------------------------------------------------
def pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: the first key (a regular expression) that matches the
    whole module name or a '.'-delimited suffix of it gives the value; none matching gives the default."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _adapter_weights(folder: Path) -> Path:
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise UsageError(f"--lora {folder}: no adapter_model.safetensors or adapter_model.bin")


def _weight_infos(adapter: Adapter) -> dict[str, TensorInfo]:
    if adapter.weights.suffix == ".safetensors":
        return {k: TensorInfo(SAFETENSORS_DTYPES.get(m["dtype"], F32), tuple(m["shape"]))
                for k, m in safetensors_header(adapter.weights).items()}
    import torch

    try:
        adapter._bin = torch.load(adapter.weights, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises many types for a damaged pickle
        raise UserError(f"{adapter.weights}: cannot be read as PyTorch weights ({exc})") from None
    if not isinstance(adapter._bin, dict):
        raise UserError(f"{adapter.weights}: expected a dict of tensors")
    return {k: TensorInfo(DType.of(v.dtype), tuple(v.shape)) for k, v in adapter._bin.items()}


def read_adapter(folder: Path | str) -> Adapter:
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"--lora {folder}: no such adapter folder")
    if not (folder / "adapter_config.json").is_file():
        raise UsageError(f"--lora {folder}: not a PEFT adapter (no adapter_config.json)")
    config = read_json(folder / "adapter_config.json")
    kind = str(config.get("peft_type", "")).upper()
    if kind != "LORA":
        raise UsageError(f"--lora {folder}: a {kind or 'unknown'} adapter; only LoRA adapters can be merged")
    for key, what in UNSUPPORTED.items():
        if config.get(key):
            raise UsageError(f"--lora {folder}: {what} is not supported by the merge (adapter_config.json {key})")
    if config.get("bias", "none") != "none":
        raise UsageError(f"--lora {folder}: the adapter trains biases (bias={config['bias']!r}); "
                         "MiniCPM's layers have none")
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(r, int) or r < 1 or not isinstance(alpha, (int, float)):
        raise UserError(f"{folder / 'adapter_config.json'}: needs a positive integer r and a lora_alpha")
    adapter = Adapter(folder, _adapter_weights(folder), config)
    adapter._info = _weight_infos(adapter)
    _classify(adapter)
    return adapter


def _classify(adapter: Adapter) -> None:
    """Sort the adapter's tensors into LoRA pairs and saved modules, keyed by base tensor name."""
    c = adapter.config
    pairs: dict[str, dict[str, str]] = {}
    for key in adapter._info:
        name = key.removeprefix(PREFIX)
        m = re.fullmatch(r"(.+)\.(lora_A|lora_B)(?:\.[^.]+)?\.weight|(.+)\.(lora_embedding_A|lora_embedding_B)(?:\.[^.]+)?", name)
        if m:
            module, part = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
            pairs.setdefault(module, {})[part] = key
            continue
        m = re.fullmatch(r"(.+)\.lora_magnitude_vector(?:\.[^.]+)?(?:\.weight)?", name)
        if m and c.get("use_dora"):
            pairs.setdefault(m.group(1), {})["magnitude"] = key
            continue
        m = re.fullmatch(r"(.+?)(?:\.modules_to_save(?:\.[^.]+)?)?\.(weight)", name)
        if m and (m.group(1) in (c.get("modules_to_save") or []) or m.group(1).split(".")[-1]
                  in (c.get("modules_to_save") or [])):
            adapter.saved[f"{m.group(1)}.weight"] = key
            continue
        raise UserError(f"--lora {adapter.path}: tensor {key} is neither a LoRA A/B matrix nor a saved module")
    for module, parts in pairs.items():
        embedding = "lora_embedding_A" in parts or "lora_embedding_B" in parts
        a = parts.get("lora_embedding_A" if embedding else "lora_A")
        b = parts.get("lora_embedding_B" if embedding else "lora_B")
        if a is None or b is None:
            raise UserError(f"--lora {adapter.path}: module {module} has only one of its A and B matrices")
        r = pattern_value(c.get("rank_pattern") or {}, module, c["r"])
        alpha = pattern_value(c.get("alpha_pattern") or {}, module, c["lora_alpha"])
        scaling = alpha / math.sqrt(r) if c.get("use_rslora") else alpha / r
        magnitude = parts.get("magnitude")
        if c.get("use_dora") and (embedding or magnitude is None):
            raise UsageError(f"--lora {adapter.path}: DoRA on {module} "
                             f"{'(an embedding) is not supported' if embedding else 'has no magnitude vector'}")
        adapter.deltas[f"{module}.weight"] = Delta(a, b, scaling, embedding, magnitude)
        got = adapter._info[a].shape[0]
        if got != r:
            raise UserError(f"--lora {adapter.path}: {module} has rank {got} in its weights but r={r} "
                            "in adapter_config.json")


def _expected(delta: Delta, info: dict[str, TensorInfo], base: tuple[int, ...]) -> tuple[tuple, tuple]:
    """The A and B shapes a delta must have for a base tensor of shape `base`."""
    r = info[delta.a].shape[0]
    if delta.embedding:
        return (r, base[0]), (base[1], r)
    return (r, base[1]), (base[0], r)


def check_against(adapter: Adapter, ckpt, tied: bool) -> None:
    """Every module the adapter names exists in the base with the shapes its matrices need."""
    for name, delta in adapter.deltas.items():
        target = EMBED if tied and name == HEAD else name
        if target not in ckpt or len(ckpt.info(target).shape) != 2:
            raise UserError(f"--lora {adapter.path}: targets {name.removesuffix('.weight')}, which the base "
                            f"{ckpt.path} has no 2-D weight for (made for another model?)")
        base = ckpt.info(target).shape
        want_a, want_b = _expected(delta, adapter._info, base)
        checks = [(delta.a, want_a), (delta.b, want_b)] + ([(delta.magnitude, (base[0],))] if delta.magnitude else [])
        for key, want in checks:
            got = adapter._info[key].shape
            if got != want:
                raise UserError(f"--lora {adapter.path}: {key} has shape {list(got)} but the base's "
                                f"{name.removesuffix('.weight')} needs {list(want)} (made for another model?)")
    for name, key in adapter.saved.items():
        target = EMBED if tied and name == HEAD else name
        if target not in ckpt:
            raise UserError(f"--lora {adapter.path}: saves {name.removesuffix('.weight')}, which the base "
                            f"{ckpt.path} does not have")
        if adapter._info[key].shape != ckpt.info(target).shape:
            raise UserError(f"--lora {adapter.path}: saved {name} has shape {list(adapter._info[key].shape)} "
                            f"but the base's is {list(ckpt.info(target).shape)}")


# --- the merge, one base tensor at a time ----------------------------------------------------------------
class Merge:
    """What Checkpoint.get consults for a --lora view: the merged tensor for a name, computed on read."""

    def __init__(self, adapters: list[Adapter], ckpt):
        from .mup import tied as is_tied

        self.adapters = adapters
        self.config = dict(ckpt.config)
        self.tied = is_tied(ckpt.config, ckpt)  # MiniCPM3 never gets here: _check_base refuses it
        for adapter in adapters:
            check_against(adapter, ckpt, self.tied)
        self.extra: dict[str, TensorInfo] = {}
        if self.tied and any({HEAD, EMBED} & set(a.saved) for a in adapters):
            # a trained copy of one of the pair: the output model has both, so it is no longer tied
            self.config["tie_word_embeddings"] = False
            self.untied_head = True
            self.extra[HEAD] = ckpt.info(EMBED)
        else:
            self.untied_head = False

    def touches(self, name: str) -> bool:
        return any(name in a.deltas or name in a.saved for a in self.adapters)

    def get(self, name: str, read: Callable[[str], torch.Tensor]) -> torch.Tensor:
        if name == HEAD and self.untied_head:
            base_name = EMBED
        else:
            base_name = name
        targets = {name}
        if self.tied and not self.untied_head and name == EMBED:
            targets.add(HEAD)  # LoRA deltas on the shared head land in the one tensor
        if not any(t in a.deltas or t in a.saved for a in self.adapters for t in targets):
            return read(base_name)
        import torch

        w = read(base_name).to(torch.float32)
        for adapter in self.adapters:
            for t in sorted(targets):
                if t in adapter.saved:
                    w = adapter.tensor(adapter.saved[t]).to(torch.float32)
                delta = adapter.deltas.get(t)
                if delta is not None:
                    a = adapter.tensor(delta.a).to(torch.float32)
                    b = adapter.tensor(delta.b).to(torch.float32)
                    update = b @ a
                    w = w + delta.scaling * (update.t() if delta.embedding else update)
                    if delta.magnitude is not None:  # DoRA: each output row rescaled to its learned norm
                        m = adapter.tensor(delta.magnitude).to(torch.float32)
                        w = (m / torch.linalg.norm(w, dim=1))[:, None] * w
        return w


# --- views: a base folder with adapters attached -----------------------------------------------------------
_VIEWS: dict[Path, list[Adapter]] = {}
_BASES: dict[Path, Path] = {}  # view -> the base folder its links point into


def view_base(folder: Path | str) -> Path | None:
    """The base folder of a --lora view (whose files are links into it), else None."""
    return _BASES.get(Path(folder).absolute())


def merge_for(ckpt) -> Merge | None:
    """The Merge for a Checkpoint opened on a --lora view, else None (the hook in Checkpoint)."""
    adapters = _VIEWS.get(ckpt.path.absolute())
    return Merge(adapters, ckpt) if adapters else None


def is_view(folder: Path | str) -> bool:
    return Path(folder).absolute() in _VIEWS


@contextlib.contextmanager
def lora_view(base: Path | str, adapter_folders: list[Path]):
    """A folder that reads as BASE with the adapters merged: links to BASE's files, registered here.

    Yields BASE itself when there are no adapters. The view lives in a temporary folder that is removed
    on exit; its name says what it is (`BASE+ADAPTER`)."""
    base = Path(base)
    if not adapter_folders:
        yield base
        return
    adapters = [read_adapter(a) for a in adapter_folders]
    _check_base(base)
    parent = Path(tempfile.mkdtemp(prefix="minicpm-lora-"))
    view = parent / "+".join([base.name] + [a.path.resolve().name for a in adapters])
    try:
        view.mkdir()
        for f in base.iterdir():
            if f.is_file():
                (view / f.name).symlink_to(f.resolve())
        _VIEWS[view.absolute()] = adapters
        _BASES[view.absolute()] = base
        from .checkpoint import Checkpoint

        Checkpoint(view)  # every adapter checked against the base now, before any work starts
        yield view
    finally:
        _VIEWS.pop(view.absolute(), None)
        _BASES.pop(view.absolute(), None)
        shutil.rmtree(parent, ignore_errors=True)


def _check_base(base: Path) -> None:
    from .checkpoint import model_folder
    from .families import family_of

    if base.is_file():
        raise UsageError(f"--lora: {base} is a file; adapters merge into a model folder (not a GGUF)")
    folder = model_folder(base)
    config = read_json(folder / "config.json")
    if config.get("quantization_config"):
        raise UsageError(f"--lora: {folder} is quantized; merge into the float model, then quantize")
    family = family_of(config, folder / "config.json")  # MiniCPM3-4B as published has no model_type
    if family.lora_refusal:
        raise UsageError(f"--lora: merging into {family.name} is not supported ({family.lora_refusal})")


def describe(adapters_folders: list[Path]) -> list[str]:
    """One line per adapter for the verbs' tables: its path, rank, modules and the base it names."""
    lines = []
    for folder in adapters_folders:
        a = read_adapter(folder)
        modules = sorted({n.split(".")[-2] for n in a.deltas})
        saved = sorted({n.removesuffix(".weight") for n in a.saved})
        text = f"{folder}: r={a.config['r']} alpha={a.config['lora_alpha']}"
        text += f"{' rslora' if a.config.get('use_rslora') else ''} on {', '.join(modules) or 'nothing'}"
        if saved:
            text += f"; replaces {', '.join(saved)}"
        if a.base_model:
            text += f" (trained on {a.base_model}, not read)"
        lines.append(text)
    return lines
