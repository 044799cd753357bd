from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(Path(__file__).parent))  # tests/reference.py, tests/rtn.py


def leftovers(folder: Path, name: str) -> list[str]:
    """OUT itself and any temporary `.OUT.tmp-*` beside it: what an interrupted or failed run left."""
    return [p.name for p in folder.iterdir() if p.name == name or p.name.startswith(f".{name}.tmp-")]


def shared_path(*parts: str) -> Path:
    """A file from ../shared; its absence is a failure, never a skip (CI always has it)."""
    path = SHARED.joinpath(*parts)
    assert path.exists(), f"{path} is missing: tests need ../shared beside the project root"
    return path


@pytest.fixture(autouse=True)
def ctrl_c_as_at_a_terminal():
    """SIGINT raises KeyboardInterrupt, here and in every child started during the test, as for a user
    at a terminal. A runner started in the background by a script (`make test &` under sh) inherits
    SIGINT ignored, and then Python never raises it (seen: the Ctrl-C conversion test's child ran to the
    end and exited 0); an exec resets a handler to the default, but keeps an ignored signal ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """tiny(family, trained=False, **kw) -> path of a cached tiny MiniCPM checkpoint.

    family "minicpm5": the tiny MiniCPM5 (converters/tiny_minicpm5.py); trained, it also learns the chat
    format with thinking on and off from the Alpaca records."""
    from converters.tiny import make_tiny
    from converters.tiny_minicpm5 import make_tiny_minicpm5

    cache: dict = {}

    def get(family: str = "dense-gqa-tied", trained: bool = False, **kw) -> Path:
        key = (family, trained, tuple(sorted(kw.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp("tiny") / family
            text = shared_path("data", "wikitext-2-raw-v1", "train-subset-500.parquet") if trained else None
            if family == "minicpm5":  # its tokenizer is always trained on real text
                cache[key] = make_tiny_minicpm5(
                    out, text=shared_path("data", "wikitext-2-raw-v1", "train-subset-500.parquet"),
                    chats=shared_path("data", "alpaca", "alpaca_data_cleaned_500.json") if trained else None,
                    train_steps=150 if trained else 0, **kw)  # 2.5 min on one loaded core
            else:
                cache[key] = make_tiny(out, family, train_steps=300 if trained else 0, text=text, **kw)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def minicpm4_long(tiny, tmp_path_factory) -> Path:
    """tiny MiniCPM4 with max_position_embeddings 4096 > original 1024: LongRoPE uses long_factor."""
    import json
    import shutil

    src = tmp_path_factory.mktemp("long") / "minicpm4-long"
    shutil.copytree(tiny("minicpm4"), src)
    config = json.loads((src / "config.json").read_text())
    config["max_position_embeddings"] = 4096
    config["rope_scaling"]["long_factor"] = [1.0 + 0.4 * i for i in range(32)]
    (src / "config.json").write_text(json.dumps(config))
    return src


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def __repr__(self):
        return f"CliResult(code={self.code}, err={self.err!r})"


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `minicpm ARGS...` in-process; return exit code, stdout, stderr."""
    from minicpm_cli.app import main

    def run(*args) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["minicpm", *map(str, args)])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def assert_one_line_error(result: CliResult, *needles: str, code: int | None = None) -> None:
    assert result.code != 0, result
    if code is not None:
        assert result.code == code, result
    lines = [l for l in result.err.splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one stderr line, got: {result.err!r}"
    assert "Traceback" not in result.err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
