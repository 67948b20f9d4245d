"""Files of a workdir: atomic writes (a reader, or a resumed run, sees the old file or the complete new one,
never half) and the lock that keeps a second run out of a workdir in use."""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import os
import socket
from typing import Iterator

from absl import logging

LOCK_FILE = ".lock"
_UNLOCKABLE = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)  # file systems without flock
_warned_unlockable = False


class WorkdirBusy(Exception):
  """Another run holds the workdir's lock."""


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path beside `path` (same extension) and renames it over `path` on success.

  On any error (a full disk, say) the temporary file is removed and `path` is left as it was. An OSError is
  raised again naming `path`: the one the OS raises names the temporary file, or (ENOSPC from a write) nothing.
  """
  directory, name = os.path.split(os.path.abspath(path))
  stem, ext = os.path.splitext(name)
  tmp = os.path.join(directory, f".{stem}.tmp{os.getpid()}{ext}")
  try:
    yield tmp
    os.replace(tmp, path)
  except OSError as e:
    if e.errno is None:
      raise
    raise OSError(e.errno, f"{e.strerror or os.strerror(e.errno)} while writing", path) from e
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` atomically."""
  with atomic_path(path) as tmp:
    with open(tmp, "w") as f:
      f.write(text)


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[None]:
  """Holds an exclusive OS lock (flock) on `<workdir>/.lock` for the block, or raises WorkdirBusy naming the
  holder's pid, host and start time. The OS drops the lock with the process, so a killed run never blocks
  the next; where the file system cannot lock (some network mounts) it warns once and goes on unlocked."""
  global _warned_unlockable
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "a run that is still starting"
      raise WorkdirBusy(f"--workdir {workdir} is in use by another run ({holder}; lock {path}): wait for it to "
                        "end or pass another --workdir") from None
    except OSError as e:
      if e.errno not in _UNLOCKABLE:
        raise
      if not _warned_unlockable:
        logging.warning("the file system of %s cannot lock files (%s): nothing stops a second run from "
                        "using this workdir at the same time", workdir, e.strerror)
        _warned_unlockable = True
    else:
      started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
      os.ftruncate(fd, 0)
      os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode(), 0)
    yield
  finally:
    os.close(fd)  # closing the only descriptor releases the lock
