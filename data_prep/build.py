r"""Builds a registered data set as array_record files (idempotent: a built data set is left as it is).

A build that is killed leaves no data set that reads as complete; running the command again builds it from
scratch, to the same examples.

  python -m data_prep.build --dataset=cqd_synthetic --data_dir=/tmp/cqd_data --num_classes=20 --image_size=64
  python -m data_prep.build --dataset=cub_paired --manual_dir=/data/cub --data_dir=/tmp/cqd_data

Unset data-set options keep the data set's defaults. cub_paired and cars_paired take no options; their
manual_dir holds the official archives or their extracted folders (see cqd_jax/data/cub.py and cars.py).
Bad options and missing, truncated or corrupt files stop the build with one line naming them (`--verbose`:
the traceback).
"""

import sys

from absl import app
from absl import flags

from cqd_jax.data import registry

_DATASET = flags.DEFINE_enum("dataset", "cqd_synthetic", sorted(registry.DATASETS), "Data set to build.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir to build into.", required=True)
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "cub_paired, cars_paired: directory of the manually "
                                   "downloaded files; default <data_dir>/downloads/manual.")
_OPTIONS = {
    "num_classes": flags.DEFINE_integer("num_classes", None, "cqd_synthetic: number of classes."),
    "image_size": flags.DEFINE_integer("image_size", None, "cqd_synthetic: image side in pixels."),
    "train_per_class": flags.DEFINE_integer("train_per_class", None, "cqd_synthetic: train examples per class."),
    "validation_per_class": flags.DEFINE_integer("validation_per_class", None,
                                                 "cqd_synthetic: validation examples per class."),
    "test_per_class": flags.DEFINE_integer("test_per_class", None, "cqd_synthetic: test examples per class."),
    "seed": flags.DEFINE_integer("seed", None, "cqd_synthetic: generator seed."),
}
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the traceback of an error.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  options = {name: flag.value for name, flag in _OPTIONS.items() if flag.value is not None}
  try:
    registry.check_options(_DATASET.value, **options)
    builder = registry.prepare(_DATASET.value, _DATA_DIR.value, manual_dir=_MANUAL_DIR.value, **options)
  except (ValueError, OSError) as e:  # What bad options or source files raise; anything else is a bug.
    if _VERBOSE.value:
      raise
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(1)
  print(f"{builder.info.full_name} in {builder.data_path}")
  for split, info in builder.info.splits.items():
    print(f"  {split}: {info.num_examples} examples")


if __name__ == "__main__":
  app.run(main)
