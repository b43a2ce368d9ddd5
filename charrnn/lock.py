"""The lock of a run folder: one process trains into a run at a time.

RunLock holds a kernel lock (flock) on the run's `.lock` for the life of the
process; is_locked asks whether another process holds it now.
"""

import os
from pathlib import Path

from charrnn.errors import UserError
from charrnn.run_files import LOCK


class RunLock:
    """An exclusive lock on a run folder, held for the life of the process.

    It is a kernel lock (flock) on `.lock`: when a process dies, however it
    dies, the kernel releases it, so a stale lock file is simply reclaimed.
    """

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK
        self.file = None

    def __enter__(self):
        try:  # never through a link planted in the folder
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            raise UserError(f"cannot open {self.path} ({e.strerror}): training into a run needs a writable "
                            f"folder; make it writable, or pass its checkpoint to --resume with another "
                            f"--checkpoint-dir") from None
        self.file = open(fd, "r+")
        try:
            _lock(self.file)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise UserError(f"{self.path.parent} is being trained by {holder}; wait for it to finish "
                            f"or choose another --run") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()}")
        self.file.flush()
        return self

    def __exit__(self, *exc):
        self.file.close()  # closing releases the lock


def is_locked(run_dir):
    """Whether a process holds the lock of run_dir (RunLock) now."""
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    with open(fd, "r+") as file:  # closing releases a lock taken here
        try:
            _lock(file)
        except OSError:
            return True
    return False


def _lock(file):
    try:
        import fcntl
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # Windows
        import msvcrt
        file.seek(0)
        msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
