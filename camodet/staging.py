"""Folders written whole: a command's output folder is built in a hidden sibling (the same file
system, so the last step is a rename) and swapped in once every file is written; a failure, a
full disk included, leaves the folder as it was. Exports (serving/export.py) and saved
prediction maps (evaluation/protocol.py) are written this way. Standard library only."""

import errno
import os
import shutil
import tempfile
import uuid

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def make_staging(out_dir: str) -> str:
    """A new empty hidden folder beside `out_dir` (its parent created if need be)."""
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", dir=parent)


def swap_in(staging: str, out_dir: str) -> None:
    """Put the finished `staging` folder at `out_dir`; an old folder there is renamed away first
    and deleted only once the new one is in place."""
    share(staging, 0o777)  # mkdtemp's 0700
    out_dir, old = os.path.abspath(out_dir), None
    if os.path.lexists(out_dir):
        # a unique name beside it, so the rename stays on one file system
        name = f".{os.path.basename(out_dir)}.old-{uuid.uuid4().hex[:8]}"
        old = os.path.join(os.path.dirname(out_dir), name)
        os.rename(out_dir, old)
    try:
        os.rename(staging, out_dir)
    except OSError:
        if old:
            os.rename(old, out_dir)
        raise
    if old:
        shutil.rmtree(old, ignore_errors=True)


def share(path: str, mode: int) -> None:
    """`mode` less the umask, as a plain file or folder gets: these folders are meant to be shared."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_FULL


def disk_full_message(out_dir: str, what: str) -> str:
    """The one line for a write that ran out of space: which folder, which disk, what to do."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    return (
        f"{out_dir}: no space left on the disk holding {parent} while writing {what}; "
        f"{out_dir} is left as it was: free space there and run the command again"
    )
