"""Write outputs under a temporary name next to the target and rename at the end.

An interrupted or failed run (exception, Ctrl-C) removes the temporary and leaves no OUT behind.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import UserError


def check_output(out: Path, force: bool) -> None:
    """Refuse an existing OUT (unless force) and an OUT whose folder cannot be written."""
    if out.exists() and not force:
        raise UserError(f"{out}: already exists (use --force to replace it)", code=2)
    parent = out.absolute().parent
    if not parent.is_dir():
        raise UserError(f"{parent}: output folder does not exist", code=2)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{parent}: output folder is not writable", code=1)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(out: Path, force: bool = False, is_dir: bool = True):
    """Yield a temporary path beside `out`; on success it replaces `out`, on any failure it is removed.

    mkdtemp/mkstemp create 0700/0600 entries; the output gets the permissions a plain mkdir/open would.
    """
    out = Path(out)
    check_output(out, force)
    parent = out.absolute().parent
    prefix = f".{out.name}.tmp-"
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        tmp.chmod(0o777 & ~_umask())
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=parent)
        os.close(fd)
        tmp = Path(name)
        tmp.chmod(0o666 & ~_umask())
    try:
        yield tmp
        if out.exists():  # --force: replace only once the new output is complete
            shutil.rmtree(out) if out.is_dir() and not out.is_symlink() else out.unlink()
        os.replace(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, UserError):
            raise UserError(f"{out}: could not write output: {exc.strerror or exc}") from exc
        raise
