"""Atomic file writes: a reader (or a resumed run) sees the old file or the complete new one, never half."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator


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
