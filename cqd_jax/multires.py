"""The paper's multi-resolution model (Sec. 2.3, Table 3): a linear classifier on an image's log Fourier
magnitudes (the router) tells high- from low-resolution test images and sends each to its expert, the model
trained on A (train_a) or the one adapted to B (a_cqd); a test set of both resolutions then needs no single
model that is good at both.

Run after the stages of a config with a `multires` section, it writes <workdir>/multires.md and multires.csv:
the experts, the model trained on A+B, the multi-resolution model and the oracle (each image sent by its true
domain), tested on A, on B and on both test sets merged, and the router's accuracy on the test images. The
section (configs/cars_multires.py):
  degradation    the degradation whose views A and B are the two resolutions ("lowres")
  high, low      the experts for view A and for view B, methods of the run ("train_a", "a_cqd")
  mixture        one model for both, shown beside them when it is one of config.methods ("mixture_ab")
  steps, learning_rate, l2
                 the router: full-batch Adam steps on both views of the training split, Adam's step size, and
                 the weight of the L2 penalty on its weights (300, 0.01, 1e-4)
"""

from __future__ import annotations

import csv
import functools
import io
import math
import os
import sys
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from cqd_jax import config_lib
from cqd_jax import degrade
from cqd_jax import fileio
from cqd_jax import input_pipeline
from cqd_jax import multihost
from cqd_jax import train

if TYPE_CHECKING:
  from cqd_jax import experiment

FFT_SIZE = 65  # the paper's 65 x 65 frequency features
# The paper's names of the methods (Table 3), for the table's first column.
PAPER_NAMES = {"train_a": "A", "train_b": "B", "a_then_b": "A,B", "cqd": "CQD", "a_cqd": "A,CQD", "mixture_ab": "A+B"}
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as degrade.grayscale

Table = dict[str, tuple[float, float, float]]


def fft_features(images: jax.Array) -> jax.Array:
  """[N, H, W, 3] images in [0, 1] -> [N, 65 * 65]: log(1 + |FFT2|) of the grey image, zero frequency centred,
  resized to 65 x 65. Low resolution empties the high frequencies, at the borders of this map."""
  gray = images @ jnp.asarray(_LUMA, images.dtype)
  magnitude = jnp.log1p(jnp.abs(jnp.fft.fftshift(jnp.fft.fft2(gray), axes=(-2, -1))))
  return jax.image.resize(magnitude, (len(images), FFT_SIZE, FFT_SIZE), "linear").reshape(len(images), -1)


@functools.partial(jax.jit, static_argnames=("steps",))
def train_router(features: jax.Array, domains: jax.Array, *, steps: int = 300, learning_rate: float = 0.01,
                 l2: float = 1e-4) -> dict[str, jax.Array]:
  """Logistic regression of `domains` ([N], 1 = low resolution) on standardised `features` ([N, F]): full-batch
  Adam for `steps` steps with an L2 penalty `l2` on the weights. Returns the weights and the standardisation."""
  mean, std = features.mean(0), features.std(0) + 1e-6
  x, y = (features - mean) / std, domains.astype(jnp.float32)
  tx = optax.adam(learning_rate)

  def loss_fn(p):
    return optax.sigmoid_binary_cross_entropy(x @ p["w"] + p["b"], y).mean() + l2 * jnp.sum(p["w"] ** 2)

  def step(carry, _):
    p, opt_state = carry
    updates, opt_state = tx.update(jax.grad(loss_fn)(p), opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), None

  params = {"w": jnp.zeros(features.shape[1]), "b": jnp.zeros(())}
  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
  return {"mean": mean, "std": std, **params}


@jax.jit
def route(params: Mapping[str, jax.Array], features: jax.Array) -> jax.Array:
  """[N] bool: True where the router calls the image low resolution."""
  return ((features - params["mean"]) / params["std"]) @ params["w"] + params["b"] > 0


def table(correct: Mapping[str, Sequence[np.ndarray]], low_res: Sequence[np.ndarray], *, high: str, low: str
          ) -> Table:
  """Accuracy (fractions) on A, B and A+B of each method in `correct` ({method: ([N_A] bool, [N_B] bool), right
  or wrong per test image of A and of B}), then of "multi-res" (`low`'s answer where `low_res` (on A, on B)
  says so, else `high`'s) and of "oracle" (`low`'s on B, `high`'s on A: a perfect router)."""

  def row(on_a: np.ndarray, on_b: np.ndarray) -> tuple[float, float, float]:
    return float(np.mean(on_a)), float(np.mean(on_b)), float(np.mean(np.concatenate([on_a, on_b])))

  out = {name: row(*pair) for name, pair in correct.items()}
  picked = [np.where(r, correct[low][i], correct[high][i]) for i, r in enumerate(low_res)]
  out["multi-res"] = row(*picked)
  out["oracle"] = row(correct[high][0], correct[low][1])
  return out


def markdown(rows: Table, *, high: str, low: str, router: Mapping[str, float]) -> str:
  """The table as GitHub Markdown (top-1 % on the test split) and a line on the router's accuracy."""
  labels = {"multi-res": f"router: {high} / {low}", "oracle": f"true domain: {high} / {low}"}
  out = ["| model | method | test on A | test on B | test on A+B |", "|---|---|---|---|---|"]
  for name, accuracy in rows.items():
    cells = [PAPER_NAMES.get(name, name), labels.get(name, name), *(f"{100 * a:.1f}" for a in accuracy)]
    out.append("| " + " | ".join(cells) + " |")
  out.append(f"\nRouter (linear on {FFT_SIZE}x{FFT_SIZE} log |FFT| features): the domain of "
             f"{100 * router['test']:.1f} % of the test images right (A {100 * router['A']:.1f} %, "
             f"B {100 * router['B']:.1f} %), {100 * router['train']:.1f} % of its training images.")
  return "\n".join(out) + "\n"


def _expert_fn(module: Any, view_a: degrade.View, view_b: degrade.View):
  """Jitted (variables, batch, key) -> [2, N] bool: per image, whether `module` is right on view A and on view
  B, the views' keys drawn as train.eval_step draws them (so the accuracies are the results table's)."""

  @jax.jit
  def correct(variables, batch, key):
    images = train.to_float(batch["image"])
    logits = [module.apply(variables, view(images, batch["bbox"], k)[0], train=False)
              for view, k in zip((view_a, view_b), jax.random.split(key))]
    return jnp.stack([jnp.argmax(l, -1) == batch["label"] for l in logits])

  return correct


def _features_fn(view_a: degrade.View, view_b: degrade.View):
  """Jitted (_, batch, key) -> [2, N, F]: the router's features of view A and of view B, keys as in _expert_fn."""

  @jax.jit
  def features(_, batch, key):
    images = train.to_float(batch["image"])
    return jnp.stack([fft_features(view(images, batch["bbox"], k)[0])
                      for view, k in zip((view_a, view_b), jax.random.split(key))])

  return features


def _passes(runner: experiment.Runner, split: str, fns: Mapping[str, tuple[Any, Any]], desc: str
            ) -> dict[str, np.ndarray]:
  """{name: fn's outputs on the images of `split`, stacked on axis 1} for fns[name] = (fn, variables) (see
  _expert_fn), in one ordered pass. Every process reads the whole split: the router and the table need all."""
  config = runner.config
  batches = input_pipeline.eval_batches(runner.data.builder, split, batch_size=config.eval_batch_size,
                                        image_size=config.dataset.storage_size or None,
                                        shard_options=grain.sharding.NoSharding())
  total = math.ceil(input_pipeline.num_examples(runner.data.builder, split) / config.eval_batch_size)
  out: dict[str, list[np.ndarray]] = {name: [] for name in fns}
  for i, batch in enumerate(tqdm.tqdm(batches, total=total, desc=desc, unit="batch", leave=False,
                                      disable=not config.progress_bar or not multihost.is_primary())):
    inputs = {k: batch[k] for k in ("image", "bbox", "label")}
    for name, (fn, variables) in fns.items():
      out[name].append(np.asarray(fn(variables, inputs, jax.random.key(i)))[:, batch["mask"]])
  return {name: np.concatenate(parts, axis=1) for name, parts in out.items()}


def _stage(stages: Sequence[experiment.Stage], config: Any, deg_name: str, method: str) -> experiment.Stage:
  """The stage whose model `method` is on degradation `deg_name` (the shared teacher, or <deg_name>/<method>)."""
  view_a = config.degradations[deg_name].a
  return next(s for s in stages if s.method == method and (s.name == f"{deg_name}/{method}"
                                                           or s.shared and s.view_a == view_a))


def check(config: Any) -> None:
  """ConfigError naming the key when config.multires names a degradation or expert the run does not have."""
  section = config.multires
  if section.degradation not in config.degradations:
    raise config_lib.ConfigError(f"config key multires.degradation={section.degradation!r} is not one of "
                                 f"config.degradations ({', '.join(config.degradations)})")
  for key in ("high", "low"):
    if section[key] not in config.methods:
      raise config_lib.ConfigError(f"config key multires.{key}={section[key]!r} is not one of config.methods")


def write(runner: experiment.Runner, stages: Sequence[experiment.Stage], trained: Mapping[str, Any]) -> str:
  """Trains the router on both views of the training split, tests the experts, the multi-resolution model and
  the oracle on config.eval_split, and writes multires.md and multires.csv (process 0); returns the Markdown.
  `trained` holds variables already in memory (by stage name), the others are read back."""
  config, section = runner.config, runner.config.multires
  check(config)
  deg = config.degradations[section.degradation]
  names = [m for m in (section.high, section.low, section.mixture) if m in config.methods]

  def views(size):
    return tuple(degrade.make_view(spec, size, config.degrade_params.to_dict()) for spec in (deg.a, deg.b))

  features = {"features": (_features_fn(*views(config.image_size)), {})}
  train_features = _passes(runner, "train", features, "multires: router features")["features"]
  n = train_features.shape[1]
  domains = jnp.repeat(jnp.arange(2), n)
  params = train_router(jnp.asarray(train_features.reshape(2 * n, -1)), domains, steps=section.steps,
                        learning_rate=section.learning_rate, l2=section.l2)
  train_accuracy = float(jnp.mean(route(params, train_features.reshape(2 * n, -1)) == domains))
  experts = {}
  for name in names:
    stage = _stage(stages, config, section.degradation, name)
    module, size = runner.student(stage)
    experts[name] = (_expert_fn(module, *views(size)), trained.get(stage.name) or runner.final_variables(stage))
  out = _passes(runner, config.eval_split, {**features, **experts}, "multires: test")
  low_res = [np.asarray(route(params, f)) for f in out.pop("features")]
  rows = table(out, low_res, high=section.high, low=section.low)
  router = {"A": float(np.mean(~low_res[0])), "B": float(np.mean(low_res[1])),
            "test": float(np.mean(np.concatenate([~low_res[0], low_res[1]]))), "train": train_accuracy}
  md = markdown(rows, high=section.high, low=section.low, router=router)
  if multihost.is_primary():
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["model", "accuracy_a", "accuracy_b", "accuracy_ab"])
    writer.writerows([name, *accuracy] for name, accuracy in rows.items())
    fileio.write_text(os.path.join(runner.workdir, "multires.csv"), buf.getvalue())
    fileio.write_text(os.path.join(runner.workdir, "multires.md"), md)
    tqdm.tqdm.write(f"\nMulti-resolution model (multires.md), top-1 % on {config.eval_split}:\n\n{md}", file=sys.stderr)
  return md
