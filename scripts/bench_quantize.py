#!/usr/bin/env python3
"""Wall time, peak memory and time per decoder layer of `minicpm quantize`, and what that predicts
for the published MiniCPM sizes.

    python scripts/bench_quantize.py [--work /tmp/minicpm-bench-quant] [--layers 4] [--methods gptq awq bnb]
                                     [--num-samples 16] [--seq-len 256] [--device cpu] [--json FILE]

The checkpoint is scripts/bench_checkpoint.py's (MiniCPM-1B widths: hidden 1536, 24/8 heads, FFN
3840, real 122,753-token vocabulary, tied, bf16) with --layers layers. Each method runs once in its
own process (`minicpm quantize ... --json`), calibrating on WikiText-2 from ../shared; peak RSS is
the process's ru_maxrss, time per layer the median gap between llm-compressor's layer ends (the
result's layer_seconds). The extrapolation scales the measured per-layer time by each model's
per-layer parameter count (a layer's calibration forward and GPTQ's column updates are linear in its
parameters at a fixed token count; GPTQ's Hessian inverse, cubic in a Linear's input width, is left
out) and the rest of the run (loading, embedding, head, saving) by the vocabulary x hidden size, and
the memory as the model in bf16 + one layer's calibration activations + the measured overhead;
bnb, which has no layer passes, is scaled whole by the parameter count. With --layers 2 the time per
layer is the one gap between the two layer ends. Figures are on this machine's CPU cores; `uptime`'s load is printed with them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHARED = ROOT.parent / "shared" / "minicpm-hf"
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-raw-v1"


def models() -> dict[str, dict]:
    """Published configs (../shared) of the sizes to extrapolate to; MiniCPM-1B's from its card."""
    from bench_checkpoint import MINICPM_1B

    out = {"MiniCPM-1B": MINICPM_1B | {"vocab_size": 122753}}
    for name, folder in (("MiniCPM-2B", "MiniCPM-V-2B-llm"), ("MiniCPM3-4B", "MiniCPM3-4B"),
                         ("MiniCPM4-8B", "MiniCPM4-8B")):
        out[name] = json.loads((SHARED / folder / "config.json").read_text())
    return out


def layer_params(config: dict) -> int:
    from converters.families import family_of

    family = family_of(config | {"architectures": ["MiniCPM3ForCausalLM" if config.get("q_lora_rank")
                                                   else "MiniCPMForCausalLM"], "num_experts": None}, "config")
    config = config | {"num_hidden_layers": 1}
    if config.get("q_lora_rank") and "v_head_dim" not in config:  # MiniCPM3-4B omits it: the default
        config["v_head_dim"] = config["qk_nope_head_dim"]
    table = family.shapes(config, "config")
    total = 0
    for name, shape in table.items():
        if name.startswith("model.layers.0."):
            n = 1
            for d in shape:
                n *= d
            total += n
    return total


def run(cmd: list[str]) -> tuple[float, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/minicpm-bench-quant"))
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--methods", nargs="+", default=["gptq", "awq", "bnb"])
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path)
    a = p.parse_args()

    from rich.console import Console

    from bench_checkpoint import ensure_checkpoint
    from minicpm_cli.ui import human_bytes, table

    src = ensure_checkpoint(a.work / f"minicpm-1b-width-{a.layers}l", a.layers)
    config = json.loads((src / "config.json").read_text())
    size = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    minicpm = str(Path(sys.executable).with_name("minicpm"))
    console = Console(width=200)
    results = {}
    for method in a.methods:
        out, report = a.work / f"out-{method}", a.work / f"{method}.json"
        cmd = [minicpm, "quantize", str(src), "--method", method, "--bits", "4", "-o", str(out), "--force",
               "--device", a.device, "--json", str(report)]
        if method != "bnb":
            cmd += ["--calib", str(WIKITEXT), "--num-samples", str(a.num_samples), "--seq-len", str(a.seq_len)]
        seconds, rss = run(cmd)
        r = json.loads(report.read_text())
        per_layer = statistics.median(r["layer_seconds"]) if r["layer_seconds"] else None
        results[method] = {"seconds": seconds, "peak_rss_mb": rss, "per_layer_s": per_layer,
                           "bytes_after": r["bytes_after"], "layer_seconds": r["layer_seconds"],
                           "load_average": os.getloadavg()}
        console.print(f"{method}: {seconds:.1f} s, peak RSS {rss:.0f} MB, per layer "
                      f"{per_layer if per_layer is None else round(per_layer, 2)} s, output "
                      f"{human_bytes(r['bytes_after'])}, load {os.getloadavg()[0]:.1f}")
    load = os.getloadavg()
    rows = [[m, f"{r['seconds']:.1f}", f"{r['peak_rss_mb']:.0f}", f"{r['peak_rss_mb'] / (size / 2**20):.2f}x",
             "-" if r["per_layer_s"] is None else f"{r['per_layer_s']:.2f}", human_bytes(r["bytes_after"])]
            for m, r in results.items()]
    console.print(table(
        f"quantize {src.name} ({human_bytes(size)} bf16, {a.layers} layers), {a.device}, "
        f"{a.num_samples} x {a.seq_len} calibration tokens, {os.cpu_count()} cores, "
        f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}",
        ["method", "wall s", "peak RSS MB", "RSS / checkpoint", "s per layer", "output"], rows))

    bench_layer = layer_params(config)
    tokens = a.num_samples * a.seq_len
    rows, extrapolated = [], {}
    for name, c in models().items():
        params = c["num_hidden_layers"] * layer_params(c) + c["vocab_size"] * c["hidden_size"] * (
            1 if c.get("tie_word_embeddings") else 2)
        activations = 2 * tokens * c["hidden_size"] * 2
        row = [name, f"{c['num_hidden_layers']} x {c['hidden_size']}", f"{params / 1e9:.2f} B"]
        extrapolated[name] = {}
        for method, r in results.items():
            rest = r["seconds"] - (r["per_layer_s"] or 0) * a.layers
            vocab_scale = c["vocab_size"] * c["hidden_size"] / (config["vocab_size"] * config["hidden_size"])
            if r["per_layer_s"]:
                minutes = (r["per_layer_s"] * layer_params(c) / bench_layer * c["num_hidden_layers"]
                           + max(rest, 0) * max(vocab_scale, params / (size / 2))) / 60
            else:  # bnb: no layer passes; loading and quantizing each Linear are linear in the parameters
                minutes = r["seconds"] * params / (size / 2) / 60
            overhead = r["peak_rss_mb"] * 2**20 - size  # what the run held beyond the checkpoint
            memory = params * 2 + activations + overhead
            extrapolated[name][method] = {"minutes": minutes, "peak_rss_bytes": memory}
            row.append(f"{minutes:.0f} min, {human_bytes(memory)}")
        rows.append(row)
    console.print(table(f"extrapolated to the published sizes ({tokens} calibration tokens, {a.device}; "
                        "time scaled by per-layer parameters, memory = model bf16 + activations + overhead)",
                        ["model", "layers x hidden", "parameters"] + [f"{m}: time, RAM" for m in results], rows))
    if a.json:
        a.json.write_text(json.dumps({"checkpoint": str(src), "checkpoint_bytes": size, "layers": a.layers,
                                      "num_samples": a.num_samples, "seq_len": a.seq_len, "device": a.device,
                                      "load_average": load, "results": results,
                                      "extrapolated": extrapolated}, indent=2) + "\n")


if __name__ == "__main__":
    main()
