"""Files written whole or not at all."""

import os


def write_atomically(path: str, text: str) -> None:
  """Writes `text` to `path` through `path.tmp` and a rename.

  Raises:
    OSError: the write failed; `path.tmp` is removed and `path` left as it
      was.
  """
  try:
    with open(path + ".tmp", "w", newline="") as f:
      f.write(text)
    os.replace(path + ".tmp", path)
  except OSError:
    try:
      os.remove(path + ".tmp")
    except OSError:
      pass
    raise
