"""Data sets by name: each entry makes the TFDS builder for a data_dir and data-set specific options.

`prepare` builds a data set once (array_record files, no TensorFlow needed). TFDS writes into a sibling
`incomplete.XXXXXX_<version>` directory and renames it to `<version>` only after every split and the
metadata are written, so a build that is interrupted never leaves a directory that reads as complete; the
next build starts again from scratch (and warns about the leftover directory, which is never read).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import os
from typing import Callable

from absl import logging
import tensorflow_datasets as tfds

from cqd_jax.data import cars
from cqd_jax.data import cub
from cqd_jax.data import paired
from cqd_jax.data import synthetic
from cqd_jax.data import synthetic_tfds

BuilderFn = Callable[..., tfds.core.DatasetBuilder]


def _cqd_synthetic(data_dir: str, **spec_fields) -> tfds.core.DatasetBuilder:
  """Options are `SyntheticSpec` fields (num_classes, image_size, *_per_class, seed); each spec has its own dir."""
  spec = synthetic.SyntheticSpec(**spec_fields)
  return synthetic_tfds.CqdSynthetic(data_dir=data_dir, config=synthetic_tfds.config_name(spec))


def _cub_paired(data_dir: str) -> tfds.core.DatasetBuilder:
  """CUB-200-2011 from manual_dir, any subset of its classes; no options (one subset per data_dir)."""
  return cub.CubPaired(data_dir=data_dir)


def _cars_paired(data_dir: str) -> tfds.core.DatasetBuilder:
  """Stanford Cars from manual_dir, any subset of its classes; no options (one subset per data_dir)."""
  return cars.CarsPaired(data_dir=data_dir)


DATASETS: dict[str, BuilderFn] = {
    "cqd_synthetic": _cqd_synthetic,
    "cub_paired": _cub_paired,
    "cars_paired": _cars_paired,
}


# The splits each data set has, known before it is built so that a config can be checked up front.
SPLITS: dict[str, tuple[str, ...]] = {
    "cqd_synthetic": synthetic.SPLITS,
    "cub_paired": paired.SPLITS,
    "cars_paired": paired.SPLITS,
}


def _check_name(name: str) -> None:
  if name not in DATASETS:
    raise ValueError(f"unknown data set {name!r}; known: {', '.join(sorted(DATASETS))}")


def check_split(name: str, split: str) -> None:
  """Raises ValueError unless `split` is a split of data set `name`, optionally sliced ('train[:90%]').

  Needs no built data set, so a config is checked before anything is built or trained.
  """
  _check_name(name)
  base = split.split("[")[0]
  if base not in SPLITS[name]:
    raise ValueError(f"data set {name} has no split {base!r}; available: {', '.join(SPLITS[name])}")
  try:
    tfds.core.ReadInstruction.from_spec(split)
  except ValueError:
    raise ValueError(f"malformed split {split!r}: expected a split of data set {name} "
                     f"({', '.join(SPLITS[name])}), optionally sliced as in 'train[:90%]'") from None


def check_options(name: str, **options) -> None:
  """Raises ValueError for an option that data set `name` does not take or a value it refuses; builds nothing."""
  _check_name(name)
  if name == "cqd_synthetic":
    known = [f.name for f in dataclasses.fields(synthetic.SyntheticSpec)]
  else:  # a builder function's keyword parameters after data_dir (a data set a plugin registers may take some)
    known = [p.name for p in list(inspect.signature(DATASETS[name]).parameters.values())[1:]
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
  if unknown := sorted(set(options) - set(known)):
    raise ValueError(f"data set {name} has no option {', '.join(unknown)}; "
                     f"{'options: ' + ', '.join(known) if known else 'it takes none'}")
  if name == "cqd_synthetic":
    synthetic.SyntheticSpec(**options)


def get_builder(name: str, data_dir: str, **options) -> tfds.core.DatasetBuilder:
  """The TFDS builder of data set `name` in `data_dir`; it may or may not be built yet."""
  _check_name(name)
  return DATASETS[name](data_dir, **options)


def prepare(name: str, data_dir: str, *, manual_dir: str | None = None, manual_dir_flag: str = "--manual_dir",
            progress: bool = True, **options) -> tfds.core.DatasetBuilder:
  """Builds data set `name` into `data_dir` unless already built (then it does nothing); returns the builder.

  `manual_dir` is where data sets with manually downloaded files look for them; when it is missing or empty
  the FileNotFoundError names `manual_dir_flag`, the flag or config key that sets it. `progress`: TFDS's progress bars
  and messages (False: a quiet build).
  """
  builder = get_builder(name, data_dir, **options)
  if not builder.is_prepared():
    instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    folder = manual_dir or os.path.join(data_dir, "downloads", "manual")  # TFDS's default
    if instructions and not (os.path.isdir(folder) and os.listdir(folder)):
      raise FileNotFoundError(f"data set {name} is not built in {data_dir}, and its files are not in {folder}: "
                              f"{folder} does not exist or is empty; set {manual_dir_flag}=<folder> "
                              f"({' '.join(instructions.split())})")
    tfds.display_progress_bar(progress)
    if leftovers := sorted(builder.data_path.parent.glob(f"incomplete.*_{builder.data_path.name}")):
      logging.warning("building %s: %s, left by an interrupted (or a still running) build, is never read; "
                      "delete it when no build is running", builder.info.full_name, ", ".join(map(str, leftovers)))
    # TFDS prints "Downloading and preparing ..." and "... downloaded and prepared" to stdout on every build.
    with contextlib.nullcontext() if progress else contextlib.redirect_stdout(io.StringIO()):
      builder.download_and_prepare(file_format="array_record",
                                   download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder
