"""The output policy: a verb writes only OUT, through a temporary beside it, and never loses a user's file.

- Every output (convert/quantize OUT, `--json`, `--plot`, chat's `/save`) is written as
  `.OUT.tmp-PID-START-XXXX` beside OUT (PID and START, the process's start time in clock ticks, prove
  whose it is) and renamed onto OUT at the end. Any exception, Ctrl-C, SIGTERM or SIGHUP removes it.
- Without force, an OUT that exists at the start is refused, and one that appears while the run writes
  is left as it is: the final rename cannot replace anything (renameat2 RENAME_NOREPLACE, or a hard link
  for a file where that is missing); the run fails and removes its temporary.
- With force, only what the verb itself would have written is replaced (`looks_like`: a model folder
  holding config.json + weights and only model files, a GGUF file, a JSON file, a plot) — never `.`,
  `..`, `/`, an empty name, $HOME, a symbolic link, a model the run reads, a folder holding one, or a file
  inside one — and the replacement is announced on stderr.
- A temporary left by a killed run (SIGKILL, power loss) is removed by the next run to the same OUT when
  its PID is gone or now belongs to a process that started at another time; otherwise it is named.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from .errors import UserError

KINDS = ("model", "gguf", "json", "plot")  # what a verb writes; "model" is a folder, the rest are files
WEIGHTS = re.compile(r".+\.safetensors|pytorch_model.*\.bin")
MODEL_FILES = re.compile(r".+\.(json|safetensors|bin|model|txt|jinja|md|yaml)")
PLOT_MAGIC = (b"\x89PNG", b"%PDF", b"<?xml", b"<svg")


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


# --- whose is it ----------------------------------------------------------------------------------
def _start_time(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (Linux /proc), None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name in parentheses may hold spaces


def _tag() -> str:
    pid = os.getpid()
    return f"{pid}-{_start_time(pid) or 0}"


def _stale(name: str, path: Path) -> bool | None:
    """True: a temporary of a run that is gone; False: of a live run; None: cannot tell."""
    m = re.search(r"\.tmp-(\d+)-(\d+)-", name)
    if not m or int(m.group(2)) == 0 or not Path("/proc/self/stat").exists():
        return None
    try:
        if path.lstat().st_uid != os.getuid():
            return None
    except OSError:
        return None
    pid, start = int(m.group(1)), int(m.group(2))
    return _start_time(pid) != start


def clean_stale(out: Path) -> None:
    """Remove the temporaries killed runs left beside OUT; name those that cannot be proven dead."""
    parent, prefix = out.absolute().parent, f".{out.name}.tmp-"
    try:
        entries = [p for p in parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return
    for path in entries:
        verdict = _stale(path.name, path)
        if verdict:
            _remove(path)
            note(f"removed {path}, a temporary left by a killed run")
        elif verdict is None:
            note(f"{path} looks like a temporary of an earlier run; remove it if no run is writing {out}")


# --- what may be replaced -------------------------------------------------------------------------
def looks_like(path: Path, kind: str) -> bool:
    """Whether `path` is plainly what a verb of this kind writes (so --force may replace it)."""
    if path.is_symlink():
        return False
    if kind == "model":
        if not path.is_dir():
            return False
        entries = list(path.iterdir())
        names = {p.name for p in entries}
        return ("config.json" in names and any(WEIGHTS.fullmatch(n) for n in names)
                and all(p.is_file() and not p.is_symlink() and MODEL_FILES.fullmatch(p.name) for p in entries))
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(8)
    if kind == "gguf":
        return head[:4] == b"GGUF"
    if kind == "plot":
        return head.startswith(PLOT_MAGIC)
    if path.stat().st_size > 256 * 2**20:  # no JSON of ours is that large; do not read it to find out
        return False
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return False
    return True


DESCRIBE = {"model": "a model folder", "gguf": "a GGUF file", "json": "a JSON file", "plot": "a plot"}


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output(out: Path, force: bool, kind: str = "model", sources=()) -> None:
    """Refuse an OUT this run must not write (see the module docstring), before any work is done."""
    assert kind in KINDS, kind
    out = Path(out)
    if out.name in ("", ".", ".."):
        raise UserError(f"{str(out) or '(empty)'!r}: not a name an output can take (name a new file or folder)",
                        code=2)
    resolved = out.absolute().parent.resolve() / out.name
    if resolved == Path.home().resolve():
        raise UserError(f"{out}: is your home folder; refusing to write over it", code=2)
    for src in sources:
        src = Path(src).resolve()
        if _inside(src, resolved):
            raise UserError(f"{out}: is or holds the model {src} this run reads; refusing to write over it", code=2)
        if os.path.lexists(out) and _inside(resolved, src) and src.is_dir():
            raise UserError(f"{out}: is a file of the model {src} this run reads; refusing to replace it", code=2)
    if os.path.lexists(out):
        if not force:
            raise UserError(f"{out}: already exists (use --force to replace it)", code=2)
        if not looks_like(out, kind):
            raise UserError(f"{out}: exists and is not {DESCRIBE[kind]} this command writes; --force replaces "
                            "only such outputs (remove or rename it yourself)", code=2)
    parent = out.absolute().parent
    if not parent.is_dir():
        raise UserError(f"{parent}: output folder does not exist", code=2)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{parent}: output folder is not writable", code=1)


# --- the final rename -----------------------------------------------------------------------------
def _renameat2():
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


_RENAMEAT2 = _renameat2()


def rename_no_replace(src: Path, dst: Path) -> None:
    """Rename src to dst atomically, failing with FileExistsError if dst exists (file, folder or link)."""
    if _RENAMEAT2 is not None:
        AT_FDCWD, RENAME_NOREPLACE = -100, 1
        if _RENAMEAT2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):  # EINVAL: the file system lacks the flag
            raise OSError(err, os.strerror(err), str(dst))
    if src.is_dir():
        # rename(2) fails onto a file or a non-empty folder; only an empty folder made in this instant is lost
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "File exists", str(dst))
        os.rename(src, dst)
    else:
        os.link(src, dst)  # fails if dst exists
        os.unlink(src)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _commit(tmp: Path, out: Path, force: bool, kind: str) -> None:
    if not os.path.lexists(out):
        try:
            return rename_no_replace(tmp, out)
        except FileExistsError:
            pass  # it appeared during the run: handled below like one that was there
    if not force:
        raise UserError(f"{out}: appeared while this run was writing; left it as it is and wrote nothing")
    if not looks_like(out, kind):
        raise UserError(f"{out}: appeared while this run was writing and is not {DESCRIBE[kind]} this command "
                        "writes; left it as it is and wrote nothing")
    if kind != "model":
        os.replace(tmp, out)  # atomic for a file: OUT is either the old file or the new one
    else:
        old = tmp.with_name(tmp.name + "-old")
        os.rename(out, old)
        try:
            rename_no_replace(tmp, out)
        except BaseException:
            os.rename(old, out)
            raise
        shutil.rmtree(old)
    note(f"replaced {out} ({DESCRIBE[kind]}), as --force asked")


@contextlib.contextmanager
def atomic_output(out: Path, force: bool = False, kind: str = "model", sources=()):
    """Yield a temporary path beside `out`; on success it becomes `out`, on any failure it is removed.

    mkdtemp/mkstemp create 0700/0600 entries; the output gets the permissions a plain mkdir/open would.
    """
    out = Path(out)
    check_output(out, force, kind, sources)
    clean_stale(out)
    parent = out.absolute().parent
    prefix = f".{out.name}.tmp-{_tag()}-"
    try:
        if kind == "model":
            tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
            tmp.chmod(0o777 & ~_umask())
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, dir=parent)
            os.close(fd)
            tmp = Path(name)
            tmp.chmod(0o666 & ~_umask())
    except OSError as exc:
        raise UserError(f"{out}: could not write output: {exc.strerror or exc}") from None
    try:
        yield tmp
        _commit(tmp, out, force, kind)
    except BaseException as exc:
        _remove(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, UserError):
            raise UserError(f"{out}: could not write output: {exc.strerror or exc}") from exc
        raise


def write_json(path: Path, data, force: bool = False, sources=()) -> None:
    """`--json FILE` under the output policy; NaN/inf become null so any JSON reader can load it."""
    text = json.dumps(_finite(data), indent=2, ensure_ascii=False) + "\n"
    with atomic_output(Path(path), force, "json", sources) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _finite(value):
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
