"""TFDS builder `cqd_synthetic`: the procedural data set of `synthetic.py` written as array_record files.

Each `SyntheticSpec` is its own BuilderConfig (see `builder_config`), so data sets of different specs live in
different directories. Everything is written and read without TensorFlow: images are yielded as PNG bytes
made with PIL, and `bbox` is a `tfds.features.BBoxFeature` (a float32 [4] tensor, ymin/xmin/ymax/xmax in
[0, 1], validated at build time), which reads back as a numpy array through `tfds.data_source`.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import re
from typing import Iterator

from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from cqd_jax.data import synthetic

_NAME_RE = re.compile(r"c(\d+)_s(\d+)_n(\d+)-(\d+)-(\d+)_seed(\d+)")


@dataclasses.dataclass(eq=False)
class CqdSyntheticConfig(tfds.core.BuilderConfig):
  """A BuilderConfig that carries the SyntheticSpec it generates."""

  spec: synthetic.SyntheticSpec = synthetic.SyntheticSpec()


def config_name(spec: synthetic.SyntheticSpec) -> str:
  """Directory-safe name that encodes every spec field, e.g. 'c20_s64_n40-10-40_seed0'."""
  return (f"c{spec.num_classes}_s{spec.image_size}_n{spec.train_per_class}-{spec.validation_per_class}-"
          f"{spec.test_per_class}_seed{spec.seed}")


def spec_from_config_name(name: str) -> synthetic.SyntheticSpec:
  """Inverse of `config_name`."""
  if not (m := _NAME_RE.fullmatch(name)):
    raise ValueError(f"not a cqd_synthetic config name: {name!r} (expected e.g. 'c20_s64_n40-10-40_seed0')")
  c, s, tr, va, te, seed = map(int, m.groups())
  return synthetic.SyntheticSpec(num_classes=c, image_size=s, train_per_class=tr, validation_per_class=va,
                                 test_per_class=te, seed=seed)


@functools.cache
def builder_config(spec: synthetic.SyntheticSpec) -> CqdSyntheticConfig:
  """The config for `spec`; cached because TFDS requires one config object per name."""
  return CqdSyntheticConfig(name=config_name(spec), spec=spec,
                            description=f"Procedural birds generated from {spec}.")


def _png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


class CqdSynthetic(tfds.core.GeneratorBasedBuilder):
  """Procedural fine-grained birds with boxes; generated locally, nothing is downloaded.

  Built data sets are reused as they are: bump VERSION whenever synthetic.py draws different pictures.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [builder_config(synthetic.SyntheticSpec())]
  # TFDS's own lookup of this file needs the `importlib_resources` backport, which it only declares for
  # Python < 3.9; it is used only to find a (here absent) download checksums file.
  code_path = epath.Path(__file__)

  @classmethod
  def get_builder_config(cls, name: str, version: str | None = None) -> CqdSyntheticConfig | None:
    """Any well-formed config name is a config, so `tfds.builder("cqd_synthetic/c4_s32_n3-2-2_seed0")` works."""
    del version  # Every config has the builder's version.
    return builder_config(spec_from_config_name(name)) if _NAME_RE.fullmatch(name) else None

  @property
  def spec(self) -> synthetic.SyntheticSpec:
    return self.builder_config.spec

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.spec.image_size
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(s, s, 3), encoding_format="png"),
            "label": tfds.features.ClassLabel(names=synthetic.class_names(self.spec)),
            "bbox": tfds.features.BBoxFeature(),
            "index": np.int64,
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,  # record i of a split is make_example(spec, split, i).
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split) for split in synthetic.SPLITS}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
    for i in range(self.spec.num_examples(split)):
      ex = synthetic.make_example(self.spec, split, i)
      yield i, {"image": _png(ex["image"]), "label": ex["label"], "bbox": ex["bbox"], "index": i}
