"""The output policy (converters.atomic), row by row: a verb writes only OUT and never loses a user's file.

| row                                                    | expected                                          |
|--------------------------------------------------------|---------------------------------------------------|
| OUT appears during the run (user folder, other run)    | 1, "appeared while this run was writing", intact  |
| --force onto "", ., .., SRC, SRC's parent, a user folder| 2, refused before any work, victims byte for byte |
| --force onto /, $HOME                                  | 2, refused (checked on the guard itself)          |
| --to gguf --force onto a folder or a non-GGUF file     | 2, "is not a GGUF file this command writes"       |
| --force onto an earlier output of the same kind        | 0, "replaced OUT", new output                     |
| eval-ppl --plot onto a folder, --json onto config.json | 2, refused, intact                                |
| chat /save onto a folder, ., an existing file          | error line, intact; /save --force a transcript: ok|
| SIGTERM / SIGHUP mid-convert                           | 143 / 129, "interrupted", no OUT, no temporary    |
| SIGKILL mid-convert, then the same convert again       | the stale temporary is removed and named, exit 0  |
| --json into a read-only folder / onto a full disk      | 1, one line, no temporary                         |
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, assert_one_line_error, leftovers
from test_bad_inputs import mounted  # noqa: F401  (a fixture: real read-only and full file systems)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative name -> sha256): what must still be there byte for byte."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def workdir(tiny, tmp_path, monkeypatch):
    """tmp_path/work/{model, notes.txt}, the current folder: what a careless -o must not destroy."""
    work = tmp_path / "work"
    shutil.copytree(tiny("dense-mha-untied"), work / "model")
    (work / "notes.txt").write_text("my notes\n")
    monkeypatch.chdir(work)
    return work


USER_FILES = {"config.json": b"{}\n", "model.safetensors": b"not ours", "thesis.docx": b"years of work"}


def user_folder(path: Path) -> Path:
    """A folder of the user's that happens to look model-like: config.json, weights and a thesis."""
    path.mkdir()
    for name, data in USER_FILES.items():
        (path / name).write_bytes(data)
    return path


# --- OUT appearing while the run writes ------------------------------------------------------------
def appear_during(monkeypatch, target: str, make) -> None:
    """Call make() just before the run's last step (`module.function`), then let that step run."""
    module_name, name = target.rsplit(".", 1)
    module = __import__(module_name, fromlist=[name])
    original = getattr(module, name)

    def step(*args, **kwargs):
        monkeypatch.setattr(module, name, original)  # once: make() may run the same step itself
        make()
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, step)


@pytest.mark.parametrize("to,step", [("llama", "converters.to_llama.copy_tokenizer_files"),
                                     ("gguf", "converters.gguf_export.write_gguf")])
@pytest.mark.parametrize("force", [False, True])
def test_an_out_that_appears_during_the_run_is_left_as_it_is(to, step, force, cli, workdir, monkeypatch):
    out = workdir / ("out.gguf" if to == "gguf" else "out")
    appear_during(monkeypatch, step, lambda: user_folder(out))
    before = snapshot(workdir)
    r = cli("convert", workdir / "model", "--to", to, "-o", out, *(["--force"] if force else []))
    assert_one_line_error(r, str(out), "appeared while this run was writing", code=1)
    victim = {f"{out.name}/{n}": hashlib.sha256(data).hexdigest() for n, data in USER_FILES.items()}
    assert snapshot(workdir) == before | victim
    assert leftovers(workdir, out.name) == [out.name], "a temporary was left behind"


def test_two_converts_to_one_out_the_second_fails_and_the_first_output_stays(cli, workdir, monkeypatch):
    from converters.to_llama import convert_to_llama

    out = workdir / "out"
    first = {}
    # the "other run" finishes its own convert to OUT while this one is still writing
    appear_during(monkeypatch, "converters.to_llama.copy_tokenizer_files",
                  lambda: first.setdefault("result", convert_to_llama(workdir / "model", out, "f32")))
    r = cli("convert", workdir / "model", "--to", "llama", "-o", out, "--dtype", "bf16")
    assert_one_line_error(r, "appeared while this run was writing", code=1)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"  # the first run's
    assert leftovers(workdir, "out") == ["out"]


# --- what --force may replace ----------------------------------------------------------------------
@pytest.mark.parametrize("target,needle", [
    ("", "not a name an output can take"),
    (".", "not a name an output can take"),
    ("model/..", "not a name an output can take"),
    ("model", "is or holds the model"),
    ("model/../../work", "is or holds the model"),
    ("thesis", "is not a model folder this command writes"),
])
@pytest.mark.parametrize("to", ["llama", "gguf"])
def test_force_never_replaces_what_the_verb_did_not_write(target, needle, to, cli, workdir):
    if target == "thesis":
        user_folder(workdir / "thesis")
        needle = needle.replace("a model folder", "a GGUF file" if to == "gguf" else "a model folder")
    before = snapshot(workdir.parent)
    r = cli("convert", workdir / "model", "--to", to, "-o", target, "--force")
    assert_one_line_error(r, needle, code=2)
    assert snapshot(workdir.parent) == before
    assert sorted(p.name for p in workdir.iterdir()) == sorted(["model", "notes.txt"] + (
        ["thesis"] if target == "thesis" else []))


def test_force_never_replaces_the_parent_folder(cli, workdir, monkeypatch):
    monkeypatch.chdir(workdir / "model")
    before = snapshot(workdir)
    r = cli("convert", ".", "--to", "gguf", "-o", "..", "--force")
    assert_one_line_error(r, "not a name an output can take", code=2)
    assert snapshot(workdir) == before


@pytest.mark.parametrize("where", ["/", "home"])
def test_force_never_replaces_the_root_or_home_folder(where, tmp_path, monkeypatch):
    from converters.atomic import check_output
    from converters.errors import UserError

    monkeypatch.setenv("HOME", str(tmp_path))
    out = Path("/") if where == "/" else Path.home()
    with pytest.raises(UserError, match="not a name an output can take|your home folder"):
        check_output(out, True, "model")


@pytest.mark.parametrize("content", [b"my notes\n", b""])
def test_gguf_force_onto_a_file_that_is_not_gguf_is_refused(content, cli, workdir):
    victim = workdir / "notes.gguf"
    victim.write_bytes(content)
    r = cli("convert", workdir / "model", "--to", "gguf", "-o", victim, "--force")
    assert_one_line_error(r, "is not a GGUF file this command writes", code=2)
    assert victim.read_bytes() == content


@pytest.mark.parametrize("to,name", [("llama", "out"), ("gguf", "out.gguf")])
def test_force_replaces_an_earlier_output_and_says_so(to, name, cli, workdir):
    out = workdir / name
    assert cli("convert", workdir / "model", "--to", to, "-o", out, "--outtype", "f32").code == 0
    first = snapshot(workdir)
    r = cli("convert", workdir / "model", "--to", to, "-o", out, "--force", "--dtype", "f32",
            "--outtype", "f16")
    assert r.code == 0, r
    assert f"replaced {out}" in r.err
    assert snapshot(workdir) != first and leftovers(workdir, name) == [name]


# --- --plot, --json and /save follow the same rules ------------------------------------------------
@pytest.mark.parametrize("option,target,needle", [
    ("--plot", "results.png", "already exists"),
    ("--json", "model/config.json", "is a file of the model"),
])
@pytest.mark.parametrize("force", [False, True])
def test_eval_ppl_outputs_never_replace_a_folder_or_a_model_file(option, target, needle, force, cli, workdir):
    if target == "results.png":
        (workdir / "results.png").mkdir()
        (workdir / "results.png" / "photo.jpg").write_bytes(b"\xff\xd8holiday")
    if force and option == "--plot":
        needle = "is not a plot this command writes"
    before = snapshot(workdir)
    r = cli("eval-ppl", workdir / "model", "--dataset", "nonexistent.txt", option, target,
            *(["--force"] if force else []))
    assert_one_line_error(r, needle, code=2)
    assert snapshot(workdir) == before


@pytest.fixture(scope="module")
def session(tiny):
    from minicpm_cli.chat import open_session
    from runtime.generate import Sampling

    chat = open_session(tiny("dense-gqa-tied"), Sampling(temperature=0, max_new_tokens=2), device="cpu", threads=1)
    yield chat
    chat.close()


@pytest.mark.parametrize("arg,needle", [
    ("{dir}", "already exists"),
    ("--force {dir}", "is not a JSON file this command writes"),
    (".", "not a name an output can take"),
    ("--force .", "not a name an output can take"),
    ("{file}", "already exists"),
    ("--force {file}", "is not a JSON file this command writes"),
])
def test_save_never_replaces_a_folder_or_a_file_that_is_not_a_transcript(arg, needle, session, workdir):
    from converters.errors import UserError
    from minicpm_cli.chat import save_transcript

    (workdir / "photos").mkdir()
    (workdir / "photos" / "a.jpg").write_bytes(b"\xff\xd8")
    before = snapshot(workdir)
    with pytest.raises(UserError, match=needle):
        save_transcript(session, arg.format(dir=workdir / "photos", file=workdir / "notes.txt"))
    assert snapshot(workdir) == before


def test_save_force_replaces_an_earlier_transcript(session, workdir, capsys):
    from minicpm_cli.chat import save_transcript

    save_transcript(session, "chat.json")
    session.system = "Answer briefly."
    assert save_transcript(session, "--force chat.json") == "saved 0 messages to chat.json"
    assert json.loads((workdir / "chat.json").read_text())["messages"] == [
        {"role": "system", "content": "Answer briefly."}]
    assert "replaced chat.json" in capsys.readouterr().err
    session.system = None


# --- signals ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_clean_up_like_ctrl_c(sig, cli, workdir, monkeypatch):
    handler = signal.getsignal(sig)
    appear_during(monkeypatch, "converters.to_llama.copy_tokenizer_files", lambda: os.kill(os.getpid(), sig))
    r = cli("convert", workdir / "model", "--to", "llama", "-o", workdir / "out")
    assert_one_line_error(r, "interrupted", code=128 + sig)
    assert leftovers(workdir, "out") == []
    assert signal.getsignal(sig) == handler  # the CLI restores what it found


KILLED_RUN = """
import os, signal, sys
import converters.to_llama as t
original = t.copy_tokenizer_files
def killed(*args):
    original(*args)
    os.kill(os.getpid(), signal.SIGKILL)
t.copy_tokenizer_files = killed
sys.argv = ["minicpm", "convert", sys.argv[1], "--to", "llama", "-o", sys.argv[2]]
from minicpm_cli.app import main
main()
"""


def test_a_temporary_left_by_a_killed_run_is_removed_by_the_next_run(cli, workdir):
    out = workdir / "out"
    done = subprocess.run([sys.executable, "-c", KILLED_RUN, str(workdir / "model"), str(out)], cwd=ROOT,
                          capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert done.returncode == -signal.SIGKILL, done.stderr
    stale = [n for n in leftovers(workdir, "out")]
    assert len(stale) == 1 and stale[0].startswith(".out.tmp-") and (workdir / stale[0] / "config.json").exists()
    r = cli("convert", workdir / "model", "--to", "llama", "-o", out)
    assert r.code == 0, r
    assert f"removed {workdir / stale[0]}, a temporary left by a killed run" in r.err
    assert leftovers(workdir, "out") == ["out"]


def test_a_temporary_of_a_live_run_is_named_not_removed(cli, workdir):
    from converters.atomic import _tag

    live = workdir / f".out.tmp-{_tag()}-abcd"  # this very process: alive, so not provably stale
    live.mkdir()
    r = cli("convert", workdir / "model", "--to", "llama", "-o", workdir / "out")
    assert r.code == 0, r
    assert live.is_dir() and f"{live} looks like a temporary" not in r.err  # it is ours and alive: left alone
    assert "removed" not in r.err


# --- --json into a failing folder ------------------------------------------------------------------
def test_json_into_a_read_only_folder_is_one_line(cli, workdir, mounted):
    folder = mounted("ro,size=1m")
    r = cli("inspect", workdir / "model", "--json", folder / "info.json")
    assert_one_line_error(r, str(folder), "not writable", code=1)


def test_json_onto_a_full_disk_is_one_line(cli, workdir, mounted):
    folder = mounted("size=64k")
    (folder / "filler").write_bytes(b"\0" * 60_000)
    with open(folder / "filler", "ab") as f:  # fill the last pages
        try:
            f.write(b"\0" * 65536)
        except OSError:
            pass
    r = cli("inspect", workdir / "model", "--json", folder / "info.json")
    assert_one_line_error(r, "info.json", "could not write output", "No space left", code=1)
    assert leftovers(folder, "info.json") == []


# --- make demo ------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["user folder", "."])
def test_make_demo_never_replaces_a_folder_it_did_not_make(where, workdir):
    """`make demo DEMO=path` replaces only an earlier demo output (its marker file); a user's folder or
    the current one is refused before anything is written, left byte for byte."""
    target = user_folder(workdir / "mine") if where == "user folder" else Path(".")
    before = snapshot(workdir)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), str(target)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done
    assert done.stderr.strip() == (f"demo: {target} exists and is not an earlier demo output; "
                                   "name another folder (make demo DEMO=path)")
    assert snapshot(workdir) == before
