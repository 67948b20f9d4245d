"""Config checks that run before any work: names resolve, numbers are finite and in range, the splits exist,
batches split evenly over the devices, and a workdir is never silently reused with a config that would change
its results.
"""

from __future__ import annotations

import functools
import importlib
import importlib.resources
import importlib.util
import json
import math
import os
import sys
from typing import Any

import ml_collections

from cqd_jax import fileio

# Keys that change how a run is shown or paced but not its results; they may differ on resume.
COSMETIC_KEYS = ("progress_bar", "compare", "compare_seconds", "log_every", "checkpoint_every", "dataset.worker_count", "dataset.cache_mb",
                 "eval_batch_size", "multires",
                 "keep_checkpoints", "validation_split", "paper")
NONFINITE_POLICIES = ("stop", "skip")
# Compute precision of teacher and student: bfloat16 suits TPUs and recent GPUs; CPUs emulate it slowly.
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


CONFIGS = str(importlib.resources.files("cqd_jax.configs"))  # the repository's configs/, installed with the package


def resolve_config(argv: list[str]) -> list[str]:
  """argv with a --config that names no file but a shipped config (`configs/demo.py`, `demo.py` or `demo`,
  with its `:arg`) pointed at the installed copy, so the commands work from any directory after a pip install.
  Another missing path is left alone, for ml_collections to report."""
  def shipped(value: str) -> str:
    path, sep, arg = value.partition(":")
    if os.path.exists(path) or os.path.dirname(path) not in ("", "configs"):
      return value
    candidate = os.path.join(CONFIGS, os.path.basename(path).removesuffix(".py") + ".py")
    return candidate + sep + arg if os.path.isfile(candidate) else value

  out = list(argv)
  for i, a in enumerate(out):
    flag, eq, value = a.partition("=")
    if flag in ("--config", "-config") and eq:
      out[i] = f"{flag}={shipped(value)}"
    elif flag in ("--config", "-config") and i + 1 < len(out):
      out[i + 1] = shipped(out[i + 1])
  return out



def tuples(tree: Any) -> Any:
  """JSON's lists back into the tuples a config holds (model options such as widths), in nested dicts."""
  if isinstance(tree, dict):
    return {k: tuples(v) for k, v in tree.items()}
  return tuple(tuples(v) for v in tree) if isinstance(tree, (list, tuple)) else tree


def is_cosmetic(key: str) -> bool:
  """Whether dotted `key` is one of COSMETIC_KEYS or lies inside one of them."""
  return any(key == c or key.startswith(c + ".") for c in COSMETIC_KEYS)


class ConfigError(ValueError):
  """A config value is missing, of the wrong type or out of range; the message names the key."""


def get(config: ml_collections.ConfigDict, key: str) -> Any:
  """The value of a dotted key (`kd.weight`); ConfigError naming the key if it is missing."""
  node = config
  for part in key.split("."):
    if part not in node:
      raise ConfigError(f"config key {key} is missing")
    node = node[part]
  return node


def set_value(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """Sets an existing dotted key (ConfigError naming it if it is missing)."""
  parent, _, last = key.rpartition(".")
  node = get(config, parent) if parent else config
  get(config, key)
  node[last] = value


def _check_number(config: ml_collections.ConfigDict, key: str, kind: type, low: float, strict: bool) -> None:
  value = get(config, key)
  if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
    raise ConfigError(f"config key {key}={value!r} must be a{'n integer' if kind is int else ' number'}")
  if not math.isfinite(value):
    raise ConfigError(f"config key {key}={value!r} must be a finite number")
  if value < low or (strict and value == low):
    raise ConfigError(f"config key {key}={value!r} must be {'>' if strict else '>='} {low}")


def _check_length(config: ml_collections.ConfigDict, prefix: str) -> None:
  """num_steps (an int, 0: from num_epochs) and num_epochs (a number, optional) of the config or a section;
  the top level needs one of them > 0."""
  _check_number(config, f"{prefix}num_steps", int, 0, strict=False)
  if "num_epochs" in (get(config, prefix[:-1]) if prefix else config):
    _check_number(config, f"{prefix}num_epochs", float, 0, strict=False)
  if not prefix and not config.num_steps and not config.get("num_epochs"):
    raise ConfigError("config keys num_steps and num_epochs are both 0 (or num_epochs is absent): set one > 0")


def num_steps(section: ml_collections.ConfigDict, batch_size: int, num_train: int, default: int = 0) -> int:
  """A stage's length from a config (or its teacher_training section): num_steps when > 0, else num_epochs
  passes over the `num_train` images of the built training split (at least one step), else `default`."""
  if section.get("num_steps"):
    return section.num_steps
  if section.get("num_epochs"):
    return max(1, math.floor(section.num_epochs * num_train / batch_size))
  return default


def load_plugins(config: ml_collections.ConfigDict) -> None:
  """Imports the modules of config.plugins (a `.py` file, relative to the current directory, or a module
  name) once each, before anything looks a name up: what they add to the registries (degrade.OPS,
  models.MODELS, losses.DISTILL_LOSSES, data.registry.DATASETS) is then known to every command."""
  for i, plugin in enumerate(config.get("plugins", ())):
    key = f"config key plugins[{i}]={plugin!r}"
    if not plugin.endswith(".py"):
      try:
        importlib.import_module(plugin)
      except ImportError as e:
        raise ConfigError(f"{key}: cannot import it ({e}); name a .py file or an importable module") from None
      continue
    path = os.path.abspath(os.path.expanduser(plugin))
    name = "cqd_jax_plugin_" + "".join(c if c.isalnum() else "_" for c in path)
    if name in sys.modules:
      continue
    if not os.path.isfile(path):
      raise ConfigError(f"{key}: no such file ({path}; relative paths start from the current directory)")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
      spec.loader.exec_module(module)
    except BaseException:
      del sys.modules[name]
      raise


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError (or ValueError from a registry) naming the first bad key.

  Runs before the workdir's config.json is written, so that a corrected config is not refused as a changed
  one. Counts JAX's devices (the batch sizes must split evenly over them), which starts JAX's backend.
  """
  from cqd_jax import degrade, losses, methods, models, train  # JAX-heavy imports, only when validating.
  from cqd_jax.data import registry

  load_plugins(config)
  for key, replacement in methods.REPLACED_KEYS.items():
    if key in config:
      raise ConfigError(f"config key {key}: no longer used; replaced by {replacement}")
  for key in ("batch_size", "eval_batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
    _check_number(config, key, int, 0, strict=True)
  _check_length(config, "")
  for key in ("batch_size", "eval_batch_size"):
    train.check_batch_size(config[key], key)
  _check_number(config, "image_size", int, 16, strict=False)
  _check_number(config, "optimizer.lr", float, 0, strict=True)
  _check_number(config, "optimizer.end_lr", float, 0, strict=False)
  _check_number(config, "optimizer.weight_decay", float, 0, strict=False)
  _check_number(config, "optimizer.warmup_steps", int, 0, strict=False)
  _check_number(config, "kd.temperature", float, 0, strict=True)
  _check_number(config, "kd.weight", float, 0, strict=False)
  _check_number(config, "augment.crop_margin", float, 0, strict=False)
  _check_number(config, "dataset.worker_count", int, 0, strict=False)
  _check_number(config, "dataset.cache_mb", float, 0, strict=False)
  if config.get("compare"):
    _check_number(config, "compare_seconds", float, 0, strict=False)
  if "teacher_training" in config:
    _check_length(config, "teacher_training.")
    _check_number(config, "teacher_training.patience", int, 0, strict=False)
    if config.teacher_training.patience and not config.get("validation_split"):
      raise ConfigError("config key teacher_training.patience needs config.validation_split (the split whose "
                        "accuracy stops the teacher); set patience=0 for a fixed length")
  if config.augment.crop_margin >= 1:
    raise ConfigError(f"config key augment.crop_margin={config.augment.crop_margin!r} must be < 1")
  losses.get_distill_loss(get(config, "kd.loss"))
  dataset = get(config, "dataset.name")
  if dataset not in registry.DATASETS:
    raise ConfigError(f"config key dataset.name={dataset!r}: unknown data set; known: "
                      f"{', '.join(sorted(registry.DATASETS))}")
  try:
    registry.check_options(dataset, **get(config, "dataset.options").to_dict())
  except ValueError as e:
    raise ConfigError(f"config key dataset.options: {e}") from None
  for key in ("eval_split", "validation_split"):
    if key == "eval_split" or config.get(key):  # validation_split: "" (or absent) means none.
      split = get(config, key)
      try:
        registry.check_split(dataset, split)
      except ValueError as e:
        raise ConfigError(f"config key {key}={split!r}: {e}") from None
  if get(config, "compute_dtype") not in COMPUTE_DTYPES:
    raise ConfigError(f"config key compute_dtype={config.compute_dtype!r} must be one of {COMPUTE_DTYPES}")
  try:
    train.check_ynn_fusions(get(config, "xla_cpu_ynn_fusions"))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if get(config, "on_nonfinite") not in NONFINITE_POLICIES:
    raise ConfigError(f"config key on_nonfinite={config.on_nonfinite!r} must be one of {NONFINITE_POLICIES}")
  if not config.methods:
    raise ConfigError("config key methods is empty")
  for name in config.methods:
    methods.get_method(name, config)
  if not config.degradations:
    raise ConfigError("config key degradations is empty")
  for name, deg in config.degradations.items():
    for side in ("a", "b"):
      try:
        degrade.make_view(get(config, f"degradations.{name}.{side}"), config.image_size,
                          config.degrade_params.to_dict())
      except ValueError as e:
        raise ConfigError(f"config key degradations.{name}.{side}: {e}") from None
  known = methods.all_methods(config)
  sections = {"model"} | {methods.model_key(methods.trained_stream(m, known), config) for m in known}
  for key in sorted(sections):
    try:
      models.get_model(get(config, f"{key}.name"), 2, **get(config, f"{key}.options").to_dict())
    except (ValueError, TypeError) as e:
      raise ConfigError(f"config key {key}: {e}") from None
  _check_streams(config, known)
  from cqd_jax import view_networks  # pylint: disable=g-import-not-at-top (JAX-heavy)
  for name in (n for n in view_networks.needed(config) if n in config):  # its section; DEFAULTS otherwise
    for key in ("num_steps", "batch_size"):
      _check_number(config, f"{name}.{key}", int, 0, strict=True)
  if config.get("multires"):
    from cqd_jax import multires  # pylint: disable=g-import-not-at-top (JAX-heavy)
    multires.check(config)


def _check_streams(config: ml_collections.ConfigDict, known: dict[str, Any]) -> None:
  """What only the plan shows: a stream started from another stage has its architecture; cached logits need
  a fixed input; the outputs a term compares exist and have one shape (or an adapter between them)."""
  import jax  # pylint: disable=g-import-not-at-top (JAX-heavy, only when validating)
  from cqd_jax import degrade, experiment, losses, methods, models  # pylint: disable=g-import-not-at-top

  cache = get(config, "cache_teacher")
  if not isinstance(cache, bool):
    raise ConfigError(f"config key cache_teacher={cache!r} must be True or False")
  network = functools.cache(lambda key: experiment.make_model(config, key, 2))  # for shapes only
  checked = set()
  for stage in experiment.plan(config):
    name = stage.method
    full = methods.resolve(known[name], config, known)
    methods.check_options(name, known[name], full)
    for term, t in zip(known[name].terms, full.terms):
      section = term.options if isinstance(term.options, str) else methods.definition_key(name)
      if not (math.isfinite(t.weight) and t.weight >= 0):
        raise ConfigError(f"config key {section}.{term.weight if isinstance(term.weight, str) else 'weight'}="
                          f"{t.weight!r} must be a finite number >= 0")
      temperature = dict(t.options).get("temperature", 1.0)
      if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"config key {section}.temperature={temperature!r} must be a finite number > 0")
    try:
      method = experiment.resolve(known[name], config, known, network)  # its active parts
    except methods.MethodError as e:
      raise ConfigError(f"config key {methods.definition_key(name)}: {e}") from None
    where = methods.definition_key(name)
    student = method.stream(method.student)
    if student.source and student.model != methods.model_key(methods.trained_stream(student.source, known),
                                                             config):
      raise ConfigError(f"config key methods: {name} starts its student from {student.source}, which needs the "
                        f"same architecture (config sections {student.model!r} and {student.source}'s differ; "
                        "leave config.teacher_model empty)")
    for sname in method.frozen:
      s = method.stream(sname)
      if not s.cache:
        continue
      if method.features(sname):
        raise ConfigError(f"config key {where}.streams.{sname}.cache: a cached stream keeps its logits only, but "
                          "a term reads its features")
      if config.augment.crop_margin:
        raise ConfigError(f"config key cache_teacher=True needs augment.crop_margin=0 (it is "
                          f"{config.augment.crop_margin}): random crops change the teacher's input every step")
      spec = {"a": stage.view_a, "b": stage.view_b}.get(s.view)
      if spec is None or degrade.is_random(spec):
        raise ConfigError(f"config key cache_teacher=True needs a deterministic input of stream {sname} of {name}, "
                          f"but its view {s.view!r} is {spec or 'a random mix'!r} in stage {stage.name}")
    if name in checked or not any(i.partition(".")[2].startswith("features.") or t.adapter
                                  for t in method.terms for i in t.inputs):
      continue
    checked.add(name)
    shapes = experiment.output_shapes(method, network)
    adapters = experiment.adapter_modules(method, shapes)
    for i, t in enumerate(method.terms):
      for inp in t.inputs:
        if inp != "label" and inp not in shapes:
          stream = inp.partition(".")[0]
          names = [k.split(".", 2)[2] for k in shapes if k.startswith(f"{stream}.features.")]
          raise ConfigError(f"config key {where}.terms[{i}].inputs: {inp!r} is not an output of its model "
                            f"{method.stream(stream).model!r}; its features: {', '.join(names)}")
      if len(t.inputs) < 2 or "label" in t.inputs or t.loss in losses.SHAPE_FREE:
        continue
      a, b = shapes[t.inputs[0]], shapes[t.inputs[1]]
      if t.adapter:
        try:
          out = jax.eval_shape(lambda x: adapters[t.metric].init_with_output(jax.random.key(0), x)[0],
                               jax.ShapeDtypeStruct(a, jax.numpy.float32)).shape
        except ValueError as e:
          raise ConfigError(f"config key {where}.terms[{i}].adapter={t.adapter!r}: {e}") from None
        a = out
      if a != b:
        raise ConfigError(f"config key {where}.terms[{i}]: {t.inputs[0]} {list(a[1:])} and {t.inputs[1]} "
                          f"{list(b[1:])} differ in shape (per example); give the term an adapter "
                          f"({', '.join(models.ADAPTERS)})")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def save(config: ml_collections.ConfigDict, workdir: str, *, allow_changes: bool = False, write: bool = True
         ) -> None:
  """Writes workdir/config.json, or refuses a config whose result-changing keys differ from the stored one.

  With `write=False` it only checks (the processes of a multi-host run all check; process 0 writes).
  """
  from cqd_jax.methods import REPLACED_KEYS  # pylint: disable=g-import-not-at-top

  path = os.path.join(workdir, "config.json")
  current = json.loads(config.to_json_best_effort())
  if os.path.exists(path) and not allow_changes:
    with open(path) as f:
      stored = json.load(f)
    old_keys = [k for k in REPLACED_KEYS if k in stored and k not in current]
    if old_keys:
      raise ConfigError(f"{path} was written before methods became streams and loss terms (config key "
                        f"{old_keys[0]}: now {REPLACED_KEYS[old_keys[0]]}); this version does not resume its "
                        "stages: use another --workdir")
    old, new = _flatten(stored), _flatten(current)
    changed = sorted(k for k in old.keys() | new.keys()
                     if old.get(k) != new.get(k) and not is_cosmetic(k))
    if changed:
      raise ConfigError(f"{path} was written by a run with a different config; differing keys: "
                        f"{', '.join(changed)} (use another --workdir, or --allow_config_change)")
  if write:
    fileio.write_text(path, json.dumps(current, indent=2, sort_keys=True))


def paper_base(dataset: str, *, distill_weight: float) -> ml_collections.ConfigDict:
  """The CQD paper's protocol (Su & Maji, Sec. 2) as a config to complete with degradations.

  ImageNet-initialised network fine-tuned at 224 px; SGD, momentum 0.9, weight decay 5e-4, batch 128,
  learning rate 1e-3 decaying linearly to 5e-5 over 30 epochs; distillation at T = 10 with weight lambda
  (200 for CUB, 50 for Cars, tuned on validation) and no T^2 factor.
  """
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Decoded training images are kept in memory up to cache_mb MiB per process, so that later epochs skip
  # decoding (the whole CUB train split at 256 px: about 1.2 GB).
  config.dataset = dict(name=dataset, data_dir="", manual_dir="", storage_size=256, worker_count=0, cache_mb=1024,
                        options={})
  config.eval_split = "test"
  config.image_size = 224
  config.degradations = {}
  # The paper's 224 -> 50 -> 224 px, and TPS noise of variance 4 px on a 14x14 grid.
  config.degrade_params = {"lowres": {"low": 50}, "distort": {"grid": 14, "variance": 4.0}}
  # Random horizontal flips and random crops that cut up to 30% of the background beside the box.
  config.augment = dict(flip=True, crop_margin=0.3)
  config.methods = ("train_a", "train_b", "a_then_b", "cqd", "a_cqd", "mixture_ab")
  # The paper's vgg-m has no public JAX/PyTorch ImageNet weights; ResNet-50 from torchvision does. Set
  # init_from to a converted file (data_prep/convert_weights.py); "" trains from scratch.
  config.model = dict(name="resnet50", options={}, init_from="")
  config.teacher_model = dict(name="", options={}, init_from="")
  config.compute_dtype = "float32"  # "bfloat16" on TPUs and GPUs: faster, parameters stay float32
  # XLA:CPU only (ignored on GPUs and TPUs): hand matmul/convolution and reduction fusions to YNNPACK, which
  # made the CPU train step 1.25-1.3x faster (benchmarks/README.md); "" keeps XLA's default fusions.
  config.xla_cpu_ynn_fusions = "dot,reduce"
  # The options of the KD term of cqd and a_cqd (methods.KD).
  config.kd = dict(loss="soft_ce", temperature=10.0, weight=distill_weight, t2_scale=False)
  # Compute the teacher's logits once per image (and flip) instead of in every step; needs
  # augment.crop_margin = 0, so off here.
  config.cache_teacher = False
  # Methods of this experiment beyond methods.METHODS: {name: {streams: ..., terms: ...}} (docs/concepts.md).
  config.method_defs = {}
  # Python files (or module names) imported before the config is checked: a new degradation, model, loss or
  # data set registers itself there (docs/extending.md).
  config.plugins = ()
  # Write comparison.md: each deployed model's accuracy, input size, parameters, FLOPs and measured images/s
  # (each model timed for at least compare_seconds and 3 batches, at the end of the run).
  config.compare = False
  config.compare_seconds = 1.0
  config.optimizer = dict(name="sgd", lr=1e-3, end_lr=5e-5, schedule="linear", warmup_steps=0, momentum=0.9,
                          nesterov=False, weight_decay=5e-4)
  config.batch_size = 128
  # Passes over the built training split per stage; num_steps > 0 overrides it (experiment.num_steps).
  config.num_epochs = 30.0
  config.num_steps = 0
  # The teacher (and any network later stages read) trains until validation accuracy has not improved for
  # `patience` evaluations (one per checkpoint), within its length (the learning rate decays over it);
  # later stages read its best-validation checkpoint, so that it is the upper bound it is in the paper.
  config.teacher_training = dict(num_epochs=40.0, num_steps=0, patience=4)
  config.eval_batch_size = 128
  config.log_every = 50
  config.checkpoint_every = 100  # ~2.4 epochs of CUB, ~1.7 of Cars: also the validation interval
  # Checkpoints every checkpoint_every steps and at the end; the latest keep_checkpoints are kept, plus the
  # one scoring best on validation_split ("" = no validation while training; results use the last model).
  config.keep_checkpoints = 2
  config.validation_split = "validation"
  # A step whose loss or gradient is not finite is never applied: "stop" ends the run naming the step and
  # the last good checkpoint, "skip" counts such steps and goes on.
  config.on_nonfinite = "stop"
  config.progress_bar = True
  return config


# The low-resolution comparison: the Table 1 baselines on B upsampled to the model size (train_b, cqd,
# a_cqd) and the students that read the low resolution itself (train_b_low and the rest).
COMPARISON_METHODS = ("train_b", "train_b_low", "kd", "cqd", "a_cqd", "pixel_distillation", "pixel_distillation_isr",
                      "horkd")


def comparison(config: ml_collections.ConfigDict, degradation: dict[str, str], *, small_model: dict[str, Any]
               ) -> ml_collections.ConfigDict:
  """`config` as the low-resolution comparison on one `degradation` (its B view must apply `lowres`):
  COMPARISON_METHODS, the comparison table, the method sections with their defaults (so that the command
  line can set them) and B at low_res.scale of the input (the native students' size, upsampled for train_b,
  cqd and a_cqd, so that every method sees the same pixels). `small_model` is the section of the native
  students and the assistant; config.model is the teacher's and the Table 1 baselines'."""
  from cqd_jax import methods  # pylint: disable=g-import-not-at-top (methods imports this module)

  config.methods = COMPARISON_METHODS
  config.degradations = {"lowres": degradation}
  for key in ("low_res", "pd", "pd_isr", "horkd"):
    config[key] = methods.DEFAULTS[key]
  config.degrade_params.lowres = {"low": round(config.image_size * config.low_res.scale)}
  config.small_model = small_model
  config.compare = True
  return config


# Model compression with CQD (the paper's Table 2): train on A, on B and CQD for each architecture, and CQD
# from the deep A model into the small network on B.
COMPRESSION_METHODS = ("train_a", "train_b", "cqd", "train_a_small", "train_b_small", "cqd_small", "cqd_to_small")


def compression(config: ml_collections.ConfigDict, degradation: str, *, deep: dict[str, Any], small: dict[str, Any]
                ) -> ml_collections.ConfigDict:
  """`config` as the compression experiment on its degradation `degradation`: COMPRESSION_METHODS with
  config.model = `deep` (train_a, train_b, cqd) and config.small_model = `small` (the *_small methods); the
  table compression.md names the architectures by their model names."""
  config.methods = COMPRESSION_METHODS
  config.degradations = {degradation: config.degradations[degradation]}
  config.model = deep
  config.teacher_model = dict(name="", options={}, init_from="")
  config.small_model = small
  return config


def super_resolution(config: ml_collections.ConfigDict, view_a: str) -> ml_collections.ConfigDict:
  """`config` as the paper's Table 4: A = `view_a`; B upsampled bicubically ("lowres", at degrade_params'
  low resolution) and by a trained SRCNN ("lowres_sr", from 56/224 of image_size: the network's x4, as the
  paper's); train_a (tested on A: the upper bound), train_b and a_cqd on each. The SRCNN is trained first,
  as stage `sr` (view_networks.DEFAULTS["sr"], config.sr)."""
  from cqd_jax import view_networks  # pylint: disable=g-import-not-at-top (JAX-heavy)

  config.degradations = {"lowres": {"a": view_a, "b": f"{view_a}+lowres"},
                         "lowres_sr": {"a": view_a, "b": f"{view_a}+lowres_sr"}}
  config.degrade_params.lowres_sr = {"low": max(1, round(config.image_size * 56 / 224))}
  config.methods = ("train_a", "train_b", "a_cqd")
  config.sr = dict(view_networks.DEFAULTS["sr"])
  return config


def pick_degradations(arg: str, known: dict[str, dict[str, str]], config_file: str) -> dict[str, dict[str, str]]:
  """The degradations a config argument names (comma-separated), e.g. `configs/demo.py:lowres,edges`."""
  names = [n.strip() for n in arg.split(",") if n.strip()]
  unknown = [n for n in names if n not in known]
  if unknown or not names:
    raise ValueError(f"{config_file}: unknown degradation {(unknown or [arg])[0]!r}; known: {', '.join(known)}")
  return {n: known[n] for n in names}


def cpu_subset_base(dataset: str, manual_dir: str, *, distill_weight: float, epochs: float,
                    image_size: int = 160) -> ml_collections.ConfigDict:
  """The paper's protocol shrunk to run on a 2-core CPU: ImageNet EfficientNet-Lite0, `image_size` px, batch 32.

  Resolution-dependent degradations are scaled from the paper's 224 px (low resolution 50 px -> 50 * s,
  TPS variance 4 px^2 -> 4 * s^2, s = image_size / 224).
  """
  config = paper_base(dataset, distill_weight=distill_weight)
  scale = image_size / 224
  config.dataset.manual_dir = manual_dir
  config.dataset.storage_size = round(image_size * 8 / 7)  # room for the crops: the box is cut from it
  config.image_size = image_size
  config.degrade_params = {"lowres": {"low": round(50 * scale)}, "distort": {"grid": 14, "variance": 4.0 * scale**2}}
  config.methods = ("train_a", "train_b", "a_then_b", "cqd", "a_cqd")
  # BatchNorm statistics that follow the new domain within the few hundred steps of a CPU run.
  config.model = dict(name="efficientnet_lite0", options={"bn_momentum": 0.9}, init_from="imagenet:efficientnet_lite0")
  config.optimizer.lr = 0.01
  config.optimizer.end_lr = 0.0005
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_epochs = epochs
  config.teacher_training = dict(num_epochs=2 * epochs, num_steps=0, patience=3)
  config.log_every = 10
  config.checkpoint_every = 25  # ~1.2 epochs: also the validation interval that stops the teacher
  return config


def cpu_subset_comparison(config: ml_collections.ConfigDict, degradation: dict[str, str]) -> ml_collections.ConfigDict:
  """A cpu_subset_base config as the low-resolution comparison: an ImageNet EfficientNet-Lite2 teacher (also
  the Table 1 baselines' network) and Lite0 students and assistant, 160 -> 40 px."""
  config.model = dict(name="efficientnet_lite2", options={"bn_momentum": 0.9}, init_from="imagenet:efficientnet_lite2")
  return comparison(config, degradation, small_model=dict(name="efficientnet_lite0", options={"bn_momentum": 0.9},
                                                           init_from="imagenet:efficientnet_lite0"))
