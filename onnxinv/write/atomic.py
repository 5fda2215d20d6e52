"""Atomic writes: a file or a folder is either there whole (new or as before) or not at all.

Both write a temporary sibling (a dot-name beside the destination, on the same filesystem) and
rename it into place with :func:`os.replace`; when anything fails, or the process is
interrupted, the temporary sibling is removed and the destination is left as it was.

* :func:`write_file` / :func:`write_text` – one file (a sweep's ``sweep.json``, summaries,
  figure);
* :func:`write_folder` – a whole folder (a result folder, a sweep's shard), replacing an
  existing one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_file(path: Path, write: Callable[[Path], None]) -> None:
    """Have ``write`` write the file it is given, then rename that into place at ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    write_file(path, lambda p: p.write_text(text))


def write_folder(dest: Path, fill: Callable[[Path], None]) -> None:
    """Have ``fill`` write into an empty temporary folder, then move that into place at ``dest``.

    An existing ``dest`` is moved aside first and deleted only once the new folder is in place;
    if the second move fails, the old folder is moved back. ``dest``'s parent must exist.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        fill(tmp)
        if dest.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, trash / dest.name)
            try:
                os.replace(tmp, dest)
            except BaseException:
                os.replace(trash / dest.name, dest)  # the previous contents stay in place
                shutil.rmtree(trash, ignore_errors=True)
                raise
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
