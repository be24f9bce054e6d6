"""Checks on the paths a command will write, made before any model loads: a bad output path fails
in a second with one line, not after the whole analysis or training, and no output may overwrite an
input (the source video, the data) or another output of the same run."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional

from models.errors import UserError

from ..sources import demo_path
from ..sources.files import URL_RE


def check_output(path: str, flag: str, *, suffixes: tuple[str, ...] = (), directory: bool = False) -> Path:
    """`path` as given to `flag` can be written: its parent directory exists and is writable, it is not
    under a file, and it is a file path (`directory=True`: a directory path, created if missing) with
    one of `suffixes` when given. Raises UserError with one line naming the flag and what to do."""
    p = Path(path).expanduser()
    if not str(path).strip():
        raise UserError(f"{flag} needs a path")
    if directory:
        if p.exists() and not p.is_dir():
            raise UserError(f"{flag} {path} is an existing file; give a directory (a new one, or a checkpoint to resume)")
    else:
        if p.is_dir():
            raise UserError(f"{flag} {path} is a directory; give a file path inside it")
        if suffixes and p.suffix.lower() not in suffixes:
            raise UserError(f"{flag} {path}: use a file name ending in {' or '.join(suffixes)}")
    parent = p.absolute().parent
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, not a directory")
    if existing != parent:
        raise UserError(f"{flag} {path}: directory {parent} does not exist (create it first)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: directory {parent} is not writable")
    if p.exists() and not os.access(p, os.W_OK):
        raise UserError(f"{flag} {path} exists and is not writable")
    return p


def local_source(spec: Optional[str]) -> Optional[str]:
    """The file a `--source` value reads, or None for a camera index or a URL."""
    if spec is None:
        return None
    spec = spec.strip()
    if spec.isdigit() or URL_RE.match(spec):
        return None
    return str(demo_path()) if spec == "demo" else spec


def _same(a: str, b: str) -> bool:
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)  # hard links and symlinks included
    except OSError:
        pass
    return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))


def check_distinct(inputs: Mapping[str, Optional[str]], outputs: Mapping[str, Optional[str]]) -> None:
    """No output is one of the inputs or another output (paths resolved; None entries are skipped)."""
    outs = [(flag, path) for flag, path in outputs.items() if path]
    for i, (flag, path) in enumerate(outs):
        for in_flag, in_path in inputs.items():
            if in_path and _same(path, in_path):
                raise UserError(f"{flag} {path} is the same file as {in_flag}: it would be overwritten (write to another path)")
        for other_flag, other in outs[:i]:
            if _same(path, other):
                raise UserError(f"{flag} and {other_flag} are the same file ({path}): give each its own path")
