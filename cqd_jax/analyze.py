"""The paper's Section 3 analysis of a finished run: where the models look, and what distillation fixes.

  python -m cqd_jax.analyze --workdir=/tmp/cqd_demo [--degradation=localize] [--num_images=1000]

For each degradation with a train_b and a cqd stage, on the test split's view B (what those models read):
  3.2  input-gradient maps of both models (|d log p(true class) / d image| per pixel) and tau, the fraction
       of gradient energy inside the object's box, per image (tau.csv) and as a scatter plot;
  3.3  the five class pairs whose pairwise confusion c(i,j) + c(j,i) drops most from train_b to a_cqd
       (to cqd when the run has no a_cqd);
  3.1  the curriculum rows of results.csv: a_then_b (A, B) and mixture_ab (A+B) beside train_b (B).
Everything goes to <workdir>/analysis/ (report.md links the figures). The config is read from
<workdir>/config.json; the stages must be finished.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import sys
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections
import numpy as np
from matplotlib.figure import Figure  # not pyplot: no global figures or backend; PNGs are drawn by Agg
from matplotlib.patches import Rectangle

from cqd_jax import config_lib
from cqd_jax import fileio

GRADIENT_METHODS = ("train_b", "cqd")  # Section 3.2 compares the model trained on B with CQD's
CONFUSION_METHODS = ("a_cqd", "cqd")  # Section 3.3's "A, CQD" model; cqd stands in when the run has none
CURRICULUM = (("train_b", "B"), ("a_then_b", "A, B"), ("mixture_ab", "A+B"))  # Section 3.1: method, trained on
NUM_PAIRS = 5


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was started with (<workdir>/config.json), JSON's lists turned back into tuples, with
  its plugins imported."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ValueError(f"--workdir {workdir} has no config.json: not the workdir of a cqd_jax.main run")
  with open(path) as f:
    config = ml_collections.ConfigDict(config_lib.tuples(json.load(f)))
  config_lib.load_plugins(config)
  return config


def tau(grad_norm_sq: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """[N] fraction of each map's sum inside its box ([N, 4] normalised ymin, xmin, ymax, xmax; a pixel is
  inside when its centre is); NaN for an all-zero map."""
  g = np.asarray(grad_norm_sq, np.float64)
  b = np.asarray(boxes, np.float64)
  _, h, w = g.shape
  ys, xs = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
  in_y = (ys >= b[:, 0:1]) & (ys <= b[:, 2:3])
  in_x = (xs >= b[:, 1:2]) & (xs <= b[:, 3:4])
  inside = (g * (in_y[:, :, None] & in_x[:, None, :])).sum((1, 2))
  with np.errstate(invalid="ignore"):
    return inside / g.sum((1, 2))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """c[i, j]: the fraction of class-i images predicted j (a row of zeros for a class without images)."""
  counts = np.zeros((num_classes, num_classes))
  np.add.at(counts, (labels, predictions), 1)
  return counts / np.maximum(counts.sum(1, keepdims=True), 1)


def top_confusions(before: np.ndarray, after: np.ndarray, k: int = NUM_PAIRS) -> list[tuple[int, int, float, float]]:
  """The k class pairs (i < j) whose pairwise confusion c(i,j) + c(j,i) drops most from `before` to `after`:
  (i, j, before's, after's)."""
  pair_before, pair_after = before + before.T, after + after.T
  i, j = np.triu_indices(len(before), 1)
  order = np.argsort(pair_after[i, j] - pair_before[i, j], kind="stable")[:k]
  return [(int(i[o]), int(j[o]), float(pair_before[i[o], j[o]]), float(pair_after[i[o], j[o]])) for o in order]


@dataclasses.dataclass
class Evaluation:
  """What `evaluate` gathers for one degradation: every image's label and predictions (by method), and for
  the first images their ids and tau (train_b and cqd), and for the first of those view B and gradient maps."""

  labels: np.ndarray  # [N]
  predictions: dict[str, np.ndarray]  # [N]
  image_ids: np.ndarray  # [num_images]
  tau: dict[str, np.ndarray]  # [num_images]
  images: np.ndarray  # [grid_images, H, W, 3] view B in [0, 1]
  boxes: np.ndarray  # [grid_images, 4] in view B's frame
  grads: dict[str, np.ndarray]  # [grid_images, H, W] per-pixel |gradient|^2
  examples: dict[int, tuple[np.ndarray, np.ndarray]]  # class -> its first uint8 image and box


def stages(config: ml_collections.ConfigDict, workdir: str, degradation: str) -> dict[str, Any]:
  """The finished stages of a degradation that the analysis runs, by method (train_b, cqd, and a_cqd when
  planned); ValueError naming the workdir and a missing or unfinished one."""
  from cqd_jax import experiment
  planned = {s.name: s for s in experiment.plan(config)}
  out = {}
  for method in dict.fromkeys([*GRADIENT_METHODS, *CONFUSION_METHODS]):
    stage = planned.get(f"{degradation}/{method}")
    if stage is None:
      if method in GRADIENT_METHODS:
        raise ValueError(f"--workdir {workdir}: degradation {degradation} has no {method} stage (config.methods: "
                         f"{', '.join(config.methods)})")
      continue
    if not os.path.exists(os.path.join(experiment.stage_dir(workdir, stage), "result.json")):
      raise ValueError(f"--workdir {workdir}: stage {stage.name} is not finished; run cqd_jax.main on the "
                       "workdir first")
    out[method] = stage
  return out


def _model_fn(model: Any, view: Any, gradients: bool) -> Any:
  """jitted (variables, uint8 images, boxes, labels, key) -> view B images, boxes, predictions and (with
  `gradients`) the per-pixel squared norm of d log p(label) / d image."""
  import jax
  import jax.numpy as jnp
  from cqd_jax import train

  def fn(variables, images, boxes, labels, key):
    images, boxes = view(train.to_float(images), boxes, key)

    def log_likelihood(x):
      log_p = jax.nn.log_softmax(model.apply(variables, x, train=False).astype(jnp.float32))
      return jnp.take_along_axis(log_p, labels[:, None], 1).sum(), log_p  # examples are independent

    if not gradients:
      return images, boxes, jnp.argmax(log_likelihood(images)[1], -1), None
    grad, log_p = jax.grad(log_likelihood, has_aux=True)(images)
    return images, boxes, jnp.argmax(log_p, -1), jnp.sum(jnp.square(grad), -1)
  return jax.jit(fn)


def evaluate(runner: Any, degradation: str, found: dict[str, Any], split: str, num_images: int, grid_images: int
             ) -> Evaluation:
  """Runs the stages `found` (by method) of an experiment.Runner over view B of `split`, in one ordered pass."""
  import jax
  import tqdm
  from cqd_jax import degrade, input_pipeline

  config = runner.config
  spec = config.degradations[degradation].b
  compiled, fns, variables = {}, {}, {}
  for method, stage in found.items():
    model, size = runner.student(stage)
    key = (runner.model_key(stage), size)
    if key not in compiled:  # train_b and cqd usually share their network and input size
      view = degrade.make_view(spec, size, config.degrade_params.to_dict())
      compiled[key] = (_model_fn(model, view, False), _model_fn(model, view, True))
    fns[method], variables[method] = compiled[key], runner.final_variables(stage)
  labels, ids, images, boxes, examples = [], [], [], [], {}
  predictions = {m: [] for m in found}
  taus = {m: [] for m in GRADIENT_METHODS}
  grads = {m: [] for m in GRADIENT_METHODS}
  batches = input_pipeline.eval_batches(runner.data.builder, split, batch_size=config.eval_batch_size,
                                        image_size=config.dataset.storage_size or None)
  total = math.ceil(input_pipeline.num_examples(runner.data.builder, split) / config.eval_batch_size)
  for i, batch in enumerate(tqdm.tqdm(batches, total=total, desc=f"analysing {degradation}", unit="batch",
                                      disable=not config.progress_bar, file=sys.stderr)):
    real = batch["mask"]
    labels.append(batch["label"][real])
    for image, box, label in zip(batch["image"][real], batch["bbox"][real], batch["label"][real]):
      examples.setdefault(int(label), (image, box))
    done = sum(len(t) for t in taus[GRADIENT_METHODS[0]])
    keep = np.flatnonzero(real)[:num_images - done]  # the rows that still need tau
    shown = keep[:max(grid_images - done, 0)]  # and gradient maps
    for method, (forward, with_grads) in fns.items():
      gradients = len(keep) > 0 and method in GRADIENT_METHODS
      out = (with_grads if gradients else forward)(variables[method], batch["image"], batch["bbox"],
                                                   batch["label"], jax.random.key(i))
      view_images, view_boxes, pred, grad = jax.device_get(out)
      predictions[method].append(pred[real])
      if gradients:
        taus[method].append(tau(grad[keep], view_boxes[keep]))
        grads[method].append(grad[shown])
        if method == GRADIENT_METHODS[0]:
          ids.append(batch["record"][keep])
          images.append(view_images[shown])
          boxes.append(view_boxes[shown])
  cat = lambda parts: {m: np.concatenate(v) for m, v in parts.items()}
  return Evaluation(np.concatenate(labels), cat(predictions), np.concatenate(ids), cat(taus), np.concatenate(images),
                    np.concatenate(boxes), cat(grads), examples)


def _image_panel(ax: Any, image: np.ndarray, title: str, box: np.ndarray | None = None, cmap: str | None = None
                 ) -> None:
  """An image (or a map, with `cmap`) with a title and, if given, its normalised box drawn in red."""
  ax.imshow(image, cmap=cmap, interpolation="nearest")
  if box is not None:
    h, w = image.shape[:2]
    ax.add_patch(Rectangle((box[1] * w - 0.5, box[0] * h - 0.5), (box[3] - box[1]) * w, (box[2] - box[0]) * h,
                           fill=False, edgecolor="red", linewidth=1.5))
  ax.set_title(title, fontsize=9)
  ax.axis("off")


def gradient_figure(degradation: str, ev: Evaluation, class_names: Sequence[str]) -> Figure:
  """Rows of images: view B with its box, then |gradient| of train_b and of cqd (darker: larger), each
  scaled to its own maximum, with the image's tau."""
  n = len(ev.images)
  fig = Figure(figsize=(7.2, 2.7 * n + 0.5), layout="constrained")
  axes = fig.subplots(n, 3, squeeze=False)
  for r in range(n):
    name = class_names[ev.labels[r]]
    _image_panel(axes[r, 0], np.clip(ev.images[r], 0, 1), f"image {ev.image_ids[r]}: {name}\nview B", ev.boxes[r])
    for c, m in enumerate(GRADIENT_METHODS, 1):
      _image_panel(axes[r, c], np.sqrt(ev.grads[m][r]), f"|gradient| of {m}\ntau = {ev.tau[m][r]:.2f}", ev.boxes[r],
                   cmap="gray_r")
  fig.suptitle(f"{degradation}: input gradients of log p(true class) on view B\n(darker: larger, each map "
               "scaled to its maximum; red: the object's box)", fontsize=10)
  return fig


def tau_summary(ev: Evaluation) -> dict[str, float]:
  """Mean tau per gradient method, and the fractions of images where cqd's is higher and equal."""
  b, c = ev.tau["train_b"], ev.tau["cqd"]
  return {"mean_train_b": float(np.nanmean(b)), "mean_cqd": float(np.nanmean(c)), "cqd_higher": float(np.mean(c > b)),
          "equal": float(np.mean(c == b)), "images": len(b)}


def tau_figure(degradation: str, ev: Evaluation) -> Figure:
  """Scatter plot of each image's tau, train_b (x) against cqd (y), with the diagonal."""
  s = tau_summary(ev)
  fig = Figure(figsize=(4.8, 5.0), layout="constrained")
  ax = fig.subplots()
  ax.plot([0, 1], [0, 1], color="gray", linewidth=1, linestyle="--", label="equal")
  ax.scatter(ev.tau["train_b"], ev.tau["cqd"], s=10, alpha=0.5, label="test image")
  ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), aspect="equal", xlabel="tau of train_b (B)", ylabel="tau of cqd")
  ax.set_title(f"{degradation}: gradient energy inside the box ({s['images']} images)\nmean tau: train_b "
               f"{s['mean_train_b']:.3f}, cqd {s['mean_cqd']:.3f}; cqd higher on {100 * s['cqd_higher']:.0f}%",
               fontsize=9)
  ax.legend(loc="lower right", fontsize=8)
  return fig


def confusion_pairs(ev: Evaluation, num_classes: int) -> tuple[str, list[tuple[int, int, float, float]]]:
  """The model compared with train_b (a_cqd, else cqd) and the top pairs of `top_confusions`."""
  after = next(m for m in CONFUSION_METHODS if m in ev.predictions)
  matrix = lambda m: confusion_matrix(ev.labels, ev.predictions[m], num_classes)
  return after, top_confusions(matrix("train_b"), matrix(after))


def confusion_figure(degradation: str, after: str, pairs: Sequence[tuple[int, int, float, float]],
                     examples: dict[int, tuple[np.ndarray, np.ndarray]], class_names: Sequence[str],
                     config: ml_collections.ConfigDict) -> Figure:
  """One row per class pair: an example test image of each class in view A and in view B."""
  import jax
  from cqd_jax import degrade, train
  deg = config.degradations[degradation]
  views = [(letter, degrade.make_view(spec, config.image_size, config.degrade_params.to_dict()))
           for letter, spec in (("A", deg.a), ("B", deg.b))]
  fig = Figure(figsize=(8.0, 2.6 * len(pairs)), layout="constrained")
  rows = fig.subfigures(len(pairs), 1, squeeze=False)[:, 0]
  for rank, (row, (i, j, before, now)) in enumerate(zip(rows, pairs), 1):
    row.suptitle(f"{rank}. {class_names[i]} vs {class_names[j]}: c(i,j) + c(j,i) = {before:.2f} (train_b), "
                 f"{now:.2f} ({after})", fontsize=10, fontweight="bold")
    axes = row.subplots(1, 4)
    for k, cls in enumerate((i, j)):
      for v, (letter, view) in enumerate(views):
        ax = axes[2 * k + v]
        if cls not in examples:  # a class without test images can still be predicted
          ax.set_title(f"{class_names[cls]}\nno test image", fontsize=9)
          ax.axis("off")
          continue
        image, box = examples[cls]
        shown = view(train.to_float(image[None]), box[None], jax.random.key(0))[0][0]
        _image_panel(ax, np.clip(np.asarray(shown), 0, 1), f"{class_names[cls]}\nview {letter}")
  fig.suptitle(f"{degradation}: the class pairs whose confusion on view B drops most from train_b to {after}",
               fontsize=11)
  return fig


def curriculum(workdir: str, degradation: str) -> list[tuple[str, str, float]]:
  """(method, trained on, accuracy on B) of the Section 3.1 methods in results.csv, in CURRICULUM order."""
  path = os.path.join(workdir, "results.csv")
  if not os.path.exists(path):
    return []
  with open(path, newline="") as f:
    rows = {r["method"]: r for r in csv.DictReader(f) if r["degradation"] == degradation}
  return [(m, on, float(rows[m]["accuracy_b"])) for m, on in CURRICULUM if m in rows]


def _report_section(degradation: str, ev: Evaluation, after: str, pairs: Sequence[tuple[int, int, float, float]],
                    class_names: Sequence[str], rows: Sequence[tuple[str, str, float]]) -> str:
  s = tau_summary(ev)
  fallback = "" if after == "a_cqd" else " (the run has no a_cqd stage, so cqd stands in for the paper's A, CQD)"
  lines = [
      f"## {degradation}", "",
      "### Input gradients (Section 3.2)", "",
      f"![{degradation} gradients]({degradation}_gradients.png)", "",
      f"tau, the fraction of gradient energy (squared per-pixel norm; the paper's formula sums the norm) inside "
      f"the box in view B's frame, on {s['images']} test images:", "",
      "| method | mean tau |", "|---|---|",
      f"| train_b | {s['mean_train_b']:.3f} |", f"| cqd | {s['mean_cqd']:.3f} |", "",
      f"cqd's tau is higher on {100 * s['cqd_higher']:.1f}% of the images and equal on {100 * s['equal']:.1f}%; "
      "per image: tau.csv.", "",
      f"![{degradation} tau]({degradation}_tau.png)", "",
      "### Top confusions (Section 3.3)", "",
      f"Class pairs whose pairwise confusion c(i,j) + c(j,i) drops most from train_b to {after}{fallback}:", "",
      f"| rank | class i | class j | train_b | {after} | reduction |", "|---|---|---|---|---|---|",
      *(f"| {r} | {class_names[i]} | {class_names[j]} | {b:.3f} | {a:.3f} | {b - a:.3f} |"
        for r, (i, j, b, a) in enumerate(pairs, 1)), "",
      f"![{degradation} confusions]({degradation}_confusions.png)", "",
      "### Curriculum (Section 3.1)", ""]
  if any(m != "train_b" for m, _, _ in rows):
    lines += ["| method | trained on | top-1 on B (%) |", "|---|---|---|",
              *(f"| {m} | {on} | {100 * acc:.1f} |" for m, on, acc in rows)]
  else:
    lines.append(f"results.csv has no a_then_b or mixture_ab row for {degradation}: nothing to compare.")
  return "\n".join(lines) + "\n"


def analyze(workdir: str, degradations: Sequence[str] | None = None, num_images: int = 1000, grid_images: int = 6,
            split: str | None = None) -> dict[str, Figure]:
  """Writes <workdir>/analysis/ (report.md, tau.csv, three PNGs per degradation); returns the figures by path.
  `degradations` defaults to every one with a train_b and a cqd stage, `split` to the config's eval_split."""
  from cqd_jax import experiment
  workdir = os.path.abspath(os.path.expanduser(workdir))
  config = load_config(workdir)
  if degradations:
    unknown = [d for d in degradations if d not in config.degradations]
    if unknown:
      raise ValueError(f"--degradation {unknown[0]}: the run in {workdir} has only {', '.join(config.degradations)}")
  else:
    names = {s.name for s in experiment.plan(config)}
    degradations = [d for d in config.degradations if all(f"{d}/{m}" in names for m in GRADIENT_METHODS)]
    if not degradations:
      raise ValueError(f"--workdir {workdir}: no degradation has both a train_b and a cqd stage")
  if num_images < grid_images or grid_images < 1:
    raise ValueError(f"--num_images ({num_images}) must be >= --grid_images ({grid_images}) >= 1")
  found = {d: stages(config, workdir, d) for d in degradations}  # every error before the long work
  split = split or config.eval_split
  out_dir = os.path.join(workdir, "analysis")
  os.makedirs(out_dir, exist_ok=True)
  data = experiment.prepare_data(config, workdir)
  runner, class_names = experiment.Runner(config, workdir, data), data.class_names
  figures, sections, tau_rows = {}, [], []
  for d in degradations:
    ev = evaluate(runner, d, found[d], split, num_images, grid_images)
    after, pairs = confusion_pairs(ev, len(class_names))
    figures[os.path.join(out_dir, f"{d}_gradients.png")] = gradient_figure(d, ev, class_names)
    figures[os.path.join(out_dir, f"{d}_tau.png")] = tau_figure(d, ev)
    figures[os.path.join(out_dir, f"{d}_confusions.png")] = confusion_figure(d, after, pairs, ev.examples,
                                                                             class_names, config)
    sections.append(_report_section(d, ev, after, pairs, class_names, curriculum(workdir, d)))
    tau_rows += [(d, m, int(i), float(t)) for m in GRADIENT_METHODS for i, t in zip(ev.image_ids, ev.tau[m])]
  for path, fig in figures.items():
    with fileio.atomic_path(path) as tmp:
      fig.savefig(tmp, dpi=110)
  buf = io.StringIO()
  writer = csv.writer(buf)
  writer.writerow(["degradation", "method", "image_id", "tau"])
  writer.writerows(tau_rows)
  fileio.write_text(os.path.join(out_dir, "tau.csv"), buf.getvalue())
  header = (f"# Analysis of {workdir} (the paper's Section 3)\n\nSplit {split}, view B of each degradation; "
            "image ids are positions in the split.\n\n")
  fileio.write_text(os.path.join(out_dir, "report.md"), header + "\n".join(sections))
  return figures


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from cqd_jax import checkpoint
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  try:
    analyze(f.workdir, f.degradation, f.num_images, f.grid_images, f.split)
  except (ValueError, OSError, checkpoint.CheckpointError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    raise SystemExit(1) from None
  print(f"wrote {os.path.join(os.path.abspath(f.workdir), 'analysis', 'report.md')}")


def run() -> None:
  """Defines the command's flags and runs `main`. They are defined here, not on import, because cqd_jax.main
  defines a --workdir flag too and both modules are imported together (tests)."""
  flags.DEFINE_string("workdir", None, "The workdir of a finished cqd_jax.main run.", required=True)
  flags.DEFINE_list("degradation", None, "Degradations to analyse (default: each with train_b and cqd stages).")
  flags.DEFINE_integer("num_images", 1000, "Test images for tau.", lower_bound=1)
  flags.DEFINE_integer("grid_images", 6, "Images in the gradient figure.", lower_bound=1)
  flags.DEFINE_string("split", None, "Split to analyse (default: the config's eval_split).")
  app.run(main)


if __name__ == "__main__":
  run()
