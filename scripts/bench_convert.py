#!/usr/bin/env python3
"""Wall time, peak memory and output size of `minicpm convert` on a MiniCPM-1B-width checkpoint.

    python scripts/bench_convert.py [--work /tmp/minicpm-bench] [--layers 12] [--repeat 3]
                                    [--baseline DIR] [--skip-llama-cpp] [--json FILE]

The checkpoint (scripts/bench_checkpoint.py: hidden 1536, 24/8 heads, FFN 3840, 12 layers, real
122,753-token vocabulary, tied, bf16, 955 MB) is generated once under --work. Every command runs in
its own process; peak RSS is that process's ru_maxrss. Rows, in one run:
- read: reading the checkpoint's bytes (warm page cache), the floor for any converter;
- `cp -r` of the folder: the anchor for `--to llama` (goal: <= 2x its time);
- idle: the interpreter with torch and the converters imported, the "small constant" of the memory
  bound (goal: peak RSS <= largest output tensor in f32 + idle);
- start-up: `minicpm --help`, the CLI's own start-up (no torch: `--to llama` never imports it);
- `--to llama`, `--to gguf` f16 / q8_0 / f16 --fold, next to llama.cpp's own convert_hf_to_gguf.py
  (from the llama-cpp-python sdist, downloaded with pip into --llama-cpp; benchmark only);
- with --baseline DIR (a checkout of older code, e.g. `git archive COMMIT | tar -x -C DIR`), our
  rows again with that code, for before/after figures in the same run.
Times are the best of --repeat runs (the machine may be shared); runs alternate between tools, and
the load average is printed with the table.
"""
from __future__ import annotations

import argparse
import json
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

LLAMA_CPP_PYTHON = "0.3.36"


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


def run(cmd: list[str], code: Path | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one command in its own process (our code from `code`)."""
    env = dict(os.environ, PYTHONPATH=str(code or ROOT))
    # Every command starts with no dirty pages: otherwise the kernel throttles a writer to the disk's
    # speed once the page cache holds what earlier rows wrote (seen: cp -r 0.75 s in one repeat and
    # 8.2 s in the next, 110 MB/s, at dirty_ratio 20 on this 24 GB machine).
    os.sync()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
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
            while fh.read(8 << 20):  # small reads: this process's size bounds every child's peak RSS
                pass
    return time.perf_counter() - start


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return path.stat().st_size


def largest_f32_mb(src: Path) -> float:
    config = json.loads((src / "config.json").read_text())
    H, V, I = config["hidden_size"], config["vocab_size"], config["intermediate_size"]
    return max(V * H, I * H) * 4 / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/minicpm-bench"))
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--llama-cpp", type=Path, default=Path("/tmp/llama-cpp-python-src"),
                   help="where the llama-cpp-python sdist is (or will be) unpacked")
    p.add_argument("--skip-llama-cpp", action="store_true", help="only our own rows")
    p.add_argument("--baseline", type=Path, help="older code to run our rows with as well (before/after)")
    p.add_argument("--rows", help="only rows whose name contains one of these comma-separated words")
    p.add_argument("--json", type=Path)
    a = p.parse_args()

    from rich.console import Console

    from bench_checkpoint import ensure_checkpoint
    from minicpm_cli.ui import human_bytes, table

    src = ensure_checkpoint(a.work / f"minicpm-1b-width-{a.layers}l", a.layers)
    size = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    minicpm = str(Path(sys.executable).with_name("minicpm"))
    out = a.work / "out"
    ours = {
        "convert --to llama": ([minicpm, "convert", src, "--to", "llama", "-o", out / "llama", "--force"],
                               out / "llama"),
        "convert --to gguf f16": ([minicpm, "convert", src, "--to", "gguf", "-o", out / "f16.gguf", "--force"],
                                  out / "f16.gguf"),
        "convert --to gguf f16 --fold": ([minicpm, "convert", src, "--to", "gguf", "--fold", "-o",
                                          out / "fold-f16.gguf", "--force"], out / "fold-f16.gguf"),
        "convert --to gguf q8_0": ([minicpm, "convert", src, "--to", "gguf", "--outtype", "q8_0",
                                    "-o", out / "q8_0.gguf", "--force"], out / "q8_0.gguf"),
    }
    jobs: dict[str, tuple[list, Path | None, Path | None]] = {
        "cp -r": (["cp", "-r", src, out / "copy"], out / "copy", None),
        "idle (python + torch + converters)": (
            [sys.executable, "-c", "import torch, converters.to_llama, converters.gguf_export"], None, None),
        "start-up (minicpm --help)": ([minicpm, "--help"], None, None)}
    jobs |= {name: (cmd, made, None) for name, (cmd, made) in ours.items()}
    if a.baseline:
        jobs |= {f"{name} (baseline)": (cmd, made, a.baseline) for name, (cmd, made) in ours.items()}
    if not a.skip_llama_cpp:
        script = llama_cpp_converter(a.llama_cpp)
        for t in ("f16", "q8_0"):
            made = out / f"llama-cpp-{t}.gguf"
            jobs[f"llama.cpp convert {t}"] = ([sys.executable, script, src, "--outtype", t, "--outfile", made],
                                              made, None)
    if a.rows:
        keep = ("cp -r", "idle", "start-up") + tuple(w.strip() for w in a.rows.split(","))
        jobs = {name: job for name, job in jobs.items() if any(w in name for w in keep)}
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    read_seconds(src)  # warm the page cache: every row then reads from memory
    reads = [read_seconds(src) for _ in range(a.repeat)]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in jobs}
    sizes: dict[str, int] = {}
    for _ in range(a.repeat):
        for name, (cmd, made, code) in jobs.items():
            results[name].append(run([str(c) for c in cmd], code))
            if made is not None:
                sizes[name] = size_of(made)
                if made.is_dir():
                    shutil.rmtree(made)
                else:
                    made.unlink()
    load = os.getloadavg()

    best = {name: (min(s for s, _ in r), max(m for _, m in r)) for name, r in results.items()}
    idle = best["idle (python + torch + converters)"][1]
    bound = largest_f32_mb(src) + idle
    startup = best["start-up (minicpm --help)"][1]  # --to llama's constant: it never imports torch
    llama_bound = largest_f32_mb(src) + startup
    rows = [["read checkpoint (warm cache)", f"{min(reads):.2f}", "", "", "", ""]]
    data = {"checkpoint": str(src), "checkpoint_bytes": size, "layers": a.layers, "repeat": a.repeat,
            "read_seconds": min(reads), "load_average": load, "largest_output_tensor_f32_mb": largest_f32_mb(src),
            "idle_rss_mb": idle, "startup_rss_mb": startup, "runs": {}}
    for name, (seconds, rss) in best.items():
        ratio_t = ratio_m = ""
        if name.startswith("convert --to gguf") and f"llama.cpp convert {name.split()[3]}" in best:
            anchor = best[f"llama.cpp convert {name.split()[3]}"]
            ratio_t, ratio_m = f"{seconds / anchor[0]:.2f}x llama.cpp", f"{rss / anchor[1]:.2f}x llama.cpp"
        if name.startswith("convert --to llama"):
            idle_s = best["start-up (minicpm --help)"][0]
            ratio_t = (f"{seconds / best['cp -r'][0]:.2f}x cp -r "
                       f"({(seconds - idle_s) / best['cp -r'][0]:.2f}x past start-up)")
        if name.startswith("convert --to llama"):
            ratio_m = f"{rss / llama_bound:.2f}x bound (start-up {startup:.0f} MB)"
        elif name.startswith("convert"):
            ratio_m = (ratio_m + " / " if ratio_m else "") + f"{rss / bound:.2f}x bound"
        rows.append([name, f"{seconds:.2f}", f"{rss:.0f}", human_bytes(sizes[name]) if name in sizes else "",
                     ratio_t, ratio_m])
        data["runs"][name] = {"seconds": seconds, "peak_rss_mb": rss, "output_bytes": sizes.get(name),
                              "all_seconds": [s for s, _ in results[name]],
                              "median_seconds": statistics.median(s for s, _ in results[name])}
    title = (f"convert benchmark: {src.name}, {human_bytes(size)} bf16, {a.layers} layers, best of {a.repeat}; "
             f"bound = largest output tensor in f32 ({largest_f32_mb(src):.0f} MB) + idle ({idle:.0f} MB); "
             f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    Console(width=200).print(table(title, ["", "wall s", "peak RSS MB", "output", "time ratio", "RSS ratio"], rows))
    if a.json:
        a.json.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
