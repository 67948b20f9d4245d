r"""Classifies image files with a finished stage's model, seen through the view that stage was trained to read.

  python -m cqd_jax.predict --workdir=/tmp/cqd_demo --stage=lowres/cqd bird1.jpg bird2.png [--top_k=5]
  python -m cqd_jax.predict --workdir=/tmp/cqd_demo --stage=lowres/cqd --export=/tmp/lowres_cqd

A stage's model reads its own view of an image: a stage that reads the degradation's B (train_b, cqd, ...)
gets view B (for lowres: the crop at low resolution), the teacher (train_a, shared by the degradations with
the same A and named `train_a@<A>` or `<degradation>/train_a`) view A, exactly as its validation and the
results table evaluated it. An image file is a plain photo: the whole image is the box, and it is resized
(squashed, bilinear) to the size the data pipeline stores images at before the view. The model's weights
are the checkpoint the later stages and the results read (the best-validation one of an early-stopped
stage). With --export the model, its view and the class names go to a directory (variables.safetensors and
model.json) that `load_exported` reads without the workdir. From Python (docs/using_models.md):

  predictor = cqd_jax.predict.load(workdir, "lowres/cqd")
  probabilities = predictor.predict(images)  # uint8 [N, H, W, 3] -> [N, classes]
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from typing import TYPE_CHECKING, Any, NoReturn, Sequence

from absl import flags
from absl import logging
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import safetensors.numpy

from cqd_jax import checkpoint
from cqd_jax import config_lib
from cqd_jax import degrade
from cqd_jax import models
from cqd_jax import train

if TYPE_CHECKING:
  from cqd_jax import experiment

FORMAT = 1  # model.json's "format": what load_exported reads
SPEC_FILE = "model.json"
WEIGHTS_FILE = "variables.safetensors"
WHOLE_IMAGE = (0.0, 0.0, 1.0, 1.0)  # the box of an image without one (ymin, xmin, ymax, xmax)
BATCH_SIZE = 64  # images per call of the compiled model; fewer are padded to the next power of two
# What a user can cause: a bad workdir, stage, image or export path; anything else keeps its traceback.
USER_ERRORS = (ValueError, TypeError, OSError, checkpoint.CheckpointError, safetensors.SafetensorError)

Variables = dict[str, Any]


class Predictor:
  """A trained model behind the view it reads: uint8 images in, class probabilities out.

  `spec` holds everything needed to rebuild both (what model.json stores): the stage's name, model (name,
  options, dtype), class names, input size, storage size and view (spec and degradation params).
  `view_networks`: the variables of the networks the view reads (degrade.NETWORK_OPS, e.g. "sr").
  """

  def __init__(self, spec: dict[str, Any], variables: Variables, view_networks: dict[str, Variables]):
    self.spec, self.variables, self.view_networks = spec, variables, view_networks
    self.stage, self.class_names = spec["stage"], list(spec["class_names"])
    self.view, self.image_size, self.storage_size = spec["view"]["spec"], spec["image_size"], spec["storage_size"]
    m = spec["model"]
    self.model = models.get_model(m["name"], len(self.class_names), dtype=m["dtype"], **config_lib.tuples(m["options"]))
    view = degrade.make_view(self.view, self.image_size, config_lib.tuples(spec["view"]["params"]))
    self._forward = jax.jit(functools.partial(_forward, model=self.model, view=view))

  def predict(self, images: np.ndarray | Sequence[np.ndarray], boxes: np.ndarray | None = None) -> np.ndarray:
    """float32 [N, classes] class probabilities of uint8 RGB images ([N, H, W, 3], or a list of [H, W, 3] of
    any sizes). `boxes` [N, 4] (normalised ymin, xmin, ymax, xmax) locate the objects; default: the whole image."""
    x = np.stack([self._stored(image) for image in images]) if len(images) else np.zeros((0, 1, 1, 3), np.uint8)
    boxes = np.tile(np.float32(WHOLE_IMAGE), (len(x), 1)) if boxes is None else np.asarray(boxes, np.float32)
    if boxes.shape != (len(x), 4):
      raise ValueError(f"boxes of shape {boxes.shape} for {len(x)} images: expected ({len(x)}, 4)")
    out = [np.zeros((0, len(self.class_names)), np.float32)]
    for start in range(0, len(x), BATCH_SIZE):
      n = min(BATCH_SIZE, len(x) - start)
      rows = np.minimum(np.arange(1 << (n - 1).bit_length()), n - 1) + start  # padded with the last image
      probabilities = self._forward(self.variables, self.view_networks, x[rows], boxes[rows], jax.random.key(0))
      out.append(np.asarray(probabilities)[:n])
    return np.concatenate(out)

  def top_k(self, images: np.ndarray | Sequence[np.ndarray], k: int = 5, boxes: np.ndarray | None = None
            ) -> list[list[tuple[int, str, float]]]:
    """The k most probable classes of each image, most probable first: (label, class name, probability)."""
    probabilities = self.predict(images, boxes)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[(int(c), self.class_names[c], float(p[c])) for c in row] for p, row in zip(probabilities, order)]

  def export(self, path: str) -> str:
    """Writes the model, its view and class names to directory `path` (variables.safetensors with '/'-joined
    keys, model.json), atomically: a temporary directory renamed into place. An earlier export there is
    replaced; anything else there is refused. Returns the absolute path."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.lexists(path) and not os.path.isfile(os.path.join(path, SPEC_FILE)):
      raise ValueError(f"--export {path} exists and is not an exported model: give a new directory")
    arrays = {"model": self.variables, "view_networks": self.view_networks}
    if bad := [k for k in traverse_util.flatten_dict(arrays) if any("/" in part for part in k)]:
      raise ValueError(f"--export: variable {bad[0]} has '/' in a name, which safetensors keys cannot keep apart")
    flat = traverse_util.flatten_dict(jax.device_get(arrays), sep="/")
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp, old = (os.path.join(parent, f".{name}.{what}{os.getpid()}") for what in ("tmp", "old"))
    shutil.rmtree(tmp, ignore_errors=True)  # left by an earlier process with this pid
    try:
      os.makedirs(tmp)
      with open(os.path.join(tmp, WEIGHTS_FILE), "wb") as f:  # save_file would make it private (mode 600)
        f.write(safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in flat.items()}))
      with open(os.path.join(tmp, SPEC_FILE), "w") as f:
        json.dump({"format": FORMAT, **self.spec}, f, indent=2)
      if os.path.exists(path):  # an earlier export: moved aside, and deleted once the new one is in place
        os.rename(path, old)
      os.rename(tmp, path)
      shutil.rmtree(old, ignore_errors=True)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
    return path

  def _stored(self, image: np.ndarray) -> np.ndarray:
    """An image as the data pipeline stores it: uint8 RGB, squashed to storage_size (PIL bilinear, like
    input_pipeline's reader) when that is known."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f"expected uint8 RGB images [H, W, 3], got {image.dtype} {list(image.shape)}")
    size = self.storage_size
    if size and image.shape[:2] != (size, size):
      image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    return image


def _forward(variables: Variables, networks: dict[str, Variables], images: jax.Array, boxes: jax.Array,
             key: jax.Array, *, model: Any, view: degrade.View) -> jax.Array:
  """Class probabilities of uint8 images seen through `view`, as the evaluation steps apply the model."""
  x = view(train.to_float(images), boxes, key, networks)[0]
  return jax.nn.softmax(model.apply(variables, x, train=False).astype(jnp.float32))


def load(workdir: str, stage: str) -> Predictor:
  """The predictor of a finished stage of a cqd_jax.main run: `stage` is a stage's name (lowres/cqd,
  train_a@crop) or <degradation>/<method> for a stage the degradation shares (lowres/train_a)."""
  from cqd_jax import analyze, experiment  # pylint: disable=g-import-not-at-top (TFDS-heavy)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  config = analyze.load_config(workdir)
  found = _find_stage(config, workdir, stage)
  data = experiment.prepare_data(config, workdir)  # the run's data set, for its class names (built if absent)
  runner = experiment.Runner(config, workdir, data)
  section, size = config[runner.model_key(found)], runner.student(found)[1]
  spec = {"stage": found.name, "model": {"name": section.name, "options": section.options.to_dict(),
                                          "dtype": config.compute_dtype},
          "class_names": data.class_names, "image_size": size,
          "storage_size": config.dataset.storage_size or data.builder.info.features["image"].shape[0],
          "view": {"spec": found.view_b, "params": config.degrade_params.to_dict()},
          "plugins": list(config.get("plugins", ()))}  # where a model or view op of the user's own is registered
  networks = {name: _restore_view_network(workdir, name) for name in degrade.needs_variables(found.view_b)}
  return Predictor(spec, runner.final_variables(found), networks)


def _find_stage(config: ml_collections.ConfigDict, workdir: str, name: str) -> experiment.Stage:
  """The finished experiment.Stage called `name` (or <degradation>/<method> of a shared stage); ValueError
  listing the finished stages for an unknown or unfinished one."""
  from cqd_jax import experiment  # pylint: disable=g-import-not-at-top
  planned = experiment.plan(config)
  aliases = {f"{d}/{s.method}": s for s in planned if s.shared
             for d, deg in config.degradations.items() if deg.a == s.view_a}
  finished = [s.name for s in planned if os.path.exists(os.path.join(experiment.stage_dir(workdir, s), "result.json"))]
  stage = {**aliases, **{s.name: s for s in planned}}.get(name)
  listing = f"finished stages: {', '.join(finished) or 'none'}"
  if stage is None:
    raise ValueError(f"--stage {name}: the run in {workdir} has no such stage; {listing}")
  if stage.name not in finished:
    raise ValueError(f"--stage {name}: stage {stage.name} of the run in {workdir} is not finished; {listing}")
  return stage


def _restore_view_network(workdir: str, name: str) -> Variables:
  """The variables of view network `name` (view_networks.prepare saved them in stages/<name>/variables)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "stages", name, "variables")
  if not os.path.exists(os.path.join(workdir, "stages", name, "result.json")):
    raise ValueError(f"--workdir {workdir}: view network {name} is not trained ({path} is incomplete)")
  return ocp.StandardCheckpointer().restore(path)


def load_exported(path: str) -> Predictor:
  """The predictor of a directory written by `Predictor.export` (or --export); needs no workdir."""
  path = os.path.abspath(os.path.expanduser(path))
  spec_path = os.path.join(path, SPEC_FILE)
  if not os.path.isfile(spec_path):
    raise ValueError(f"{path} is not an exported model: it has no {SPEC_FILE}")
  with open(spec_path) as f:
    spec = json.load(f)
  if spec.pop("format", None) != FORMAT:
    raise ValueError(f"{spec_path}: format {FORMAT} expected; it was written by another version of cqd_jax")
  config_lib.load_plugins(ml_collections.ConfigDict({"plugins": tuple(spec.get("plugins", ()))}))
  arrays = traverse_util.unflatten_dict(safetensors.numpy.load_file(os.path.join(path, WEIGHTS_FILE)), sep="/")
  return Predictor(spec, arrays.get("model", {}), arrays.get("view_networks", {}))


def read_image(path: str) -> np.ndarray:
  """The uint8 RGB pixels [H, W, 3] of an image file; OSError naming the file if it cannot be read."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except OSError as e:
    reason = "not an image file PIL can read" if isinstance(e, Image.UnidentifiedImageError) else e.strerror or e
    raise OSError(f"cannot read image {path}: {reason}") from None


def _flag_values() -> flags.FlagValues:
  """The command's flags, in a FlagValues of their own: absl's global flags hold cqd_jax.main's (a required
  --config, another --workdir) wherever both modules are imported (tests)."""
  fv = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "The workdir of a cqd_jax.main run.", flag_values=fv)
  flags.DEFINE_string("stage", None, "The finished stage whose model to use: <degradation>/<method> (lowres/cqd, "
                      "lowres/train_a) or a stage's name (train_a@crop).", flag_values=fv)
  flags.DEFINE_integer("top_k", 5, "Classes printed per image.", lower_bound=1, flag_values=fv)
  flags.DEFINE_string("export", None, "Write the model, its view and class names to this directory.", flag_values=fv)
  flags.DEFINE_bool("verbose", False, "Show tracebacks instead of one-line errors.", flag_values=fv)
  flags.DEFINE_bool("help", False, "Show this help.", short_name="h", flag_values=fv)
  return fv


def _fail(e: BaseException) -> NoReturn:
  """The command's end on a user error: one `error:` line, exit status 1."""
  print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
  raise SystemExit(1)


def main(argv: Sequence[str]) -> None:
  """The command (`argv`: program name, then flags and image files): prints each image's top classes and
  writes --export; a user error prints one `error:` line and raises SystemExit(1)."""
  fv = _flag_values()
  try:
    paths = fv(list(argv))[1:]
  except flags.Error as e:
    _fail(e)
  if fv.help:
    print(f"{__doc__}\nFlags:\n{fv.get_help()}")
    return
  logging.set_verbosity(logging.WARNING)
  try:
    if not fv.workdir or not fv.stage:
      raise ValueError("--workdir and --stage are required")
    if not paths and not fv.export:
      raise ValueError("give image files to classify, or --export=<directory>")
    images = [read_image(p) for p in paths]  # every unreadable file is found before the model is loaded
    predictor = load(fv.workdir, fv.stage)
    if fv.export:
      print(f"wrote {predictor.export(fv.export)}: {predictor.stage} ({predictor.spec['model']['name']}, view "
            f"{predictor.view!r} at {predictor.image_size} px, {len(predictor.class_names)} classes)")
    if images:
      print(f"{predictor.stage}: view {predictor.view!r} at {predictor.image_size} px; top {fv.top_k} of "
            f"{len(predictor.class_names)} classes")
      for path, guesses in zip(paths, predictor.top_k(images, fv.top_k)):
        print(path)
        for label, name, p in guesses:
          print(f"  {p:.4f}  {name}" + ("" if name == str(label) else f" ({label})"))  # names may be the labels
  except USER_ERRORS as e:
    if fv.verbose:
      raise
    _fail(e)


def run() -> None:
  """`main` on sys.argv; a failed run leaves at once (checkpoint.exit_at_once_on_failure)."""
  checkpoint.exit_at_once_on_failure(lambda: main(sys.argv))


if __name__ == "__main__":
  run()
