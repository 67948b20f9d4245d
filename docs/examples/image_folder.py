"""Plugin: registers the data set `image_folder`: your own images, one folder per split and class.

  <manual_dir>/{train,validation,test}/<class name>/<image>   (any format PIL reads; classes: train's folders)
  <manual_dir>/boxes.csv   optional lines `<split>/<class name>/<image>,ymin,xmin,ymax,xmax` (in [0, 1]);
                           an image it does not list has the whole image as its box
"""

import csv
import io
from typing import Iterator

from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from cqd_jax.data import registry

SPLITS = ("train", "validation", "test")
WHOLE_IMAGE = (0.0, 0.0, 1.0, 1.0)


class ImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Images and boxes from config.dataset.manual_dir, in the features every data set has: image, label, bbox."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  code_path = epath.Path(__file__)  # where TFDS looks for checksums (a plugin file is in no package)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(encoding_format="png"),  # uint8 RGB, any size
        "label": tfds.features.ClassLabel(),  # named in _split_generators
        "bbox": tfds.features.BBoxFeature(),  # float32 (ymin, xmin, ymax, xmax) in [0, 1]
    }))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = dl_manager.manual_dir
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    self.info.features["label"].names = classes
    boxes = {}
    if (root / "boxes.csv").exists():
      with (root / "boxes.csv").open() as f:
        boxes = {row[0]: tuple(map(float, row[1:])) for row in csv.reader(f) if row}
    return {split: self._generate_examples(root, split, classes, boxes) for split in SPLITS}

  def _generate_examples(self, root: epath.Path, split: str, classes: list[str],
                         boxes: dict[str, tuple[float, ...]]) -> Iterator[tuple[str, dict]]:
    for label, name in enumerate(classes):
      for path in sorted((root / split / name).glob("*")):  # a class may lack images in a split
        key = f"{split}/{name}/{path.name}"
        with path.open("rb") as f:
          image = Image.open(f).convert("RGB")
        png = io.BytesIO()
        image.save(png, format="PNG")  # encoded here: TFDS would need TensorFlow to encode an array
        yield key, {"image": png.getvalue(), "label": label, "bbox": np.float32(boxes.get(key, WHOLE_IMAGE))}


registry.DATASETS["image_folder"] = lambda data_dir: ImageFolder(data_dir=data_dir)
registry.SPLITS["image_folder"] = SPLITS
