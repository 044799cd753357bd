#!/usr/bin/env python3
"""Wall time and peak memory of `minicpm convert` on a MiniCPM-1B-width checkpoint.

    python scripts/bench_convert.py [--work /tmp/minicpm-bench] [--layers 12] [--repeat 3] [--json FILE]

The checkpoint (hidden 1536, 24 heads / 8 KV heads, FFN 3840, tied, bf16, random weights, the tiny
sentencepiece tokenizer) is generated once under --work. Every conversion runs in its own process;
peak RSS is that process's ru_maxrss. Rows:
- read: reading the checkpoint's bytes (warm page cache), the floor for any converter;
- `--to llama` (issue 2);
- `--to gguf` f16 and q8_0 next to llama.cpp's own convert_hf_to_gguf.py (issue 3 goal: <= 0.8x its
  wall time and <= its peak RSS). llama.cpp's converter comes from the llama-cpp-python source
  distribution, downloaded with pip into --llama-cpp (benchmark only, never part of this project).
Times are the best of --repeat runs (the machine may be shared); runs of the two tools alternate.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LLAMA_CPP_PYTHON = "0.3.36"


def make_checkpoint(out: Path, layers: int) -> Path:
    """A MiniCPM-1B-width checkpoint with random bf16 weights, written tensor by tensor."""
    import torch

    from converters.tensors import OutTensor
    from converters.safetensors_out import write_sharded
    from converters.tiny import make_tiny, weight_shapes

    if (out / "config.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    make_tiny(tmp, "dense-gqa-tied")  # tokenizer files and a config to widen
    for f in tmp.glob("*.safetensors*"):
        f.unlink()
    config = json.loads((tmp / "config.json").read_text())
    config |= {"hidden_size": 1536, "num_attention_heads": 24, "num_key_value_heads": 8,
               "intermediate_size": 3840, "num_hidden_layers": layers, "dim_model_base": 256}
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    def random(shape, seed):
        def make():
            g = torch.Generator().manual_seed(seed)
            if len(shape) == 1:
                return 1.0 + 0.1 * torch.randn(shape, generator=g)
            return torch.randn(shape, generator=g) / math.sqrt(shape[1])
        return make

    tensors = [OutTensor(name, shape, random(shape, i), torch.float32)
               for i, (name, shape) in enumerate(weight_shapes(config).items())]
    write_sharded(tmp, tensors, torch.bfloat16, 2 << 30)
    tmp.rename(out)
    return out


def llama_cpp_converter(where: Path) -> Path:
    """convert_hf_to_gguf.py from the llama-cpp-python sdist (downloaded with pip if missing)."""
    script = next(where.glob("llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py"), None)
    if script:
        return script
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "-q",
                    f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(where)], check=True)
    with tarfile.open(next(where.glob("llama_cpp_python-*.tar.gz"))) as tar:
        tar.extractall(where, filter="data")
    return next(where.glob("llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py"))


def run(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one command in its own process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def read_seconds(folder: Path) -> float:
    start = time.perf_counter()
    for f in sorted(folder.glob("*.safetensors")):
        with open(f, "rb", buffering=0) as fh:
            while fh.read(64 << 20):
                pass
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/minicpm-bench"))
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--llama-cpp", type=Path, default=Path("/tmp/llama-cpp-python-src"),
                   help="where the llama-cpp-python sdist is (or will be) unpacked")
    p.add_argument("--skip-llama-cpp", action="store_true", help="only our own rows")
    p.add_argument("--json", type=Path)
    a = p.parse_args()

    from rich.console import Console

    from minicpm_cli.ui import human_bytes, table

    src = make_checkpoint(a.work / "minicpm-1b-width", a.layers)
    size = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    minicpm = str(Path(sys.executable).with_name("minicpm"))
    out = a.work / "out"
    jobs = {
        "convert --to llama": [minicpm, "convert", src, "--to", "llama", "-o", out / "llama", "--force"],
        "convert --to gguf f16": [minicpm, "convert", src, "--to", "gguf", "-o", out / "f16.gguf", "--force"],
        "convert --to gguf q8_0": [minicpm, "convert", src, "--to", "gguf", "--outtype", "q8_0",
                                   "-o", out / "q8_0.gguf", "--force"],
    }
    if not a.skip_llama_cpp:
        script = llama_cpp_converter(a.llama_cpp)
        for t in ("f16", "q8_0"):
            jobs[f"llama.cpp convert {t}"] = [sys.executable, script, src, "--outtype", t,
                                                          "--outfile", out / f"llama-cpp-{t}.gguf"]
    out.mkdir(parents=True, exist_ok=True)
    read_seconds(src)  # warm the page cache: every row then reads from memory
    reads = [read_seconds(src) for _ in range(a.repeat)]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in jobs}
    for _ in range(a.repeat):
        for name, cmd in jobs.items():
            results[name].append(run([str(c) for c in cmd]))
            for f in out.glob("*.gguf"):
                f.unlink()
            shutil.rmtree(out / "llama", ignore_errors=True)

    best = {name: (min(s for s, _ in r), max(m for _, m in r)) for name, r in results.items()}
    rows = [["read checkpoint (warm cache)", f"{min(reads):.2f}", "", "", ""]]
    data = {"checkpoint": str(src), "checkpoint_bytes": size, "layers": a.layers, "repeat": a.repeat,
            "read_seconds": min(reads), "runs": {}}
    for name, (seconds, rss) in best.items():
        anchor = None
        if name.startswith("convert --to gguf") and not a.skip_llama_cpp:
            anchor = best[f"llama.cpp convert {name.split()[-1]}"]
        elif name == "convert --to llama":
            anchor = (min(reads), None)
        ratio_t = f"{seconds / anchor[0]:.2f}x" if anchor else ""
        ratio_m = f"{rss / anchor[1]:.2f}x" if anchor and anchor[1] else ""
        rows.append([name, f"{seconds:.2f}", f"{rss:.0f}", ratio_t, ratio_m])
        data["runs"][name] = {"seconds": seconds, "peak_rss_mb": rss,
                              "all_seconds": [s for s, _ in results[name]],
                              "median_seconds": statistics.median(s for s, _ in results[name])}
    title = (f"convert benchmark: {src.name}, {human_bytes(size)} bf16, {a.layers} layers, "
             f"best of {a.repeat} (ratios: gguf rows vs llama.cpp, --to llama vs read)")
    Console().print(table(title, ["", "wall s", "peak RSS MB", "time ratio", "RSS ratio"], rows))
    if a.json:
        a.json.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
