"""The networks that degradation views read (degrade.NETWORK_OPS, e.g. the SRCNN of `lowres_sr`): each is
trained once per run, as its own stage before the methods' stages, and saved with Orbax in stages/<name>/.

A network learns from the high-quality view its op follows in the degradation's spec ("crop" of
"crop+lowres_sr") at config.image_size, with its settings in the config section of its name (`sr`, over
DEFAULTS). Its variables then reach every train and evaluation step as arguments
(train.VIEW_NETWORKS), never as constants of the compiled program.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from cqd_jax import config_lib
from cqd_jax import degrade
from cqd_jax import fileio
from cqd_jax import input_pipeline
from cqd_jax import multihost
from cqd_jax import sr
from cqd_jax import train

Variables = dict[str, Any]
# The settings of each network (config.<name> overrides them key by key).
DEFAULTS: dict[str, dict[str, Any]] = {
    # Adam steps on (lowres, original) pairs of the training split's high-quality view; the paper's SRCNN widths.
    "sr": dict(num_steps=1000, batch_size=32, lr=1e-3, widths=(64, 32)),
}


def needed(config: ml_collections.ConfigDict) -> dict[str, str]:
  """Each network the degradations' views read -> the view spec it learns from (the ops before its own);
  ConfigError naming the key when two views would need it trained on different views."""
  out, where = {}, {}
  for deg_name, deg in config.degradations.items():
    for side in ("a", "b"):
      ops = [op.strip() for op in deg[side].split("+")]
      for i, op in enumerate(ops):
        if op not in degrade.NETWORK_OPS:
          continue
        name, source = degrade.NETWORK_OPS[op][1], "+".join(ops[:i]) or "identity"
        if out.setdefault(name, source) != source:
          raise config_lib.ConfigError(
              f"config key degradations.{deg_name}.{side}: network {name!r} would learn from view {source!r} "
              f"here and from {out[name]!r} in degradations.{where[name]}; one run trains one {name!r}")
        where.setdefault(name, f"{deg_name}.{side}")
  return out


def settings(config: ml_collections.ConfigDict, name: str) -> dict[str, Any]:
  """DEFAULTS[name] with the config's section of that name over it."""
  section = config.get(name)
  return {**DEFAULTS[name], **(section.to_dict() if section is not None else {})}


def _train_sr(config: ml_collections.ConfigDict, builder: Any, source: str, progress: bool) -> tuple[Variables, dict]:
  """The SRCNN of `lowres_sr`, fitted to the training split's `source` view; with its PSNR on the validation
  split (or train) against bicubic upsampling."""
  options, size, params = settings(config, "sr"), config.image_size, config.degrade_params.to_dict()
  low = degrade.low_size(size, params.get("lowres_sr", {}).get("low"))  # what the lowres_sr view uses
  view = jax.jit(degrade.make_view(source, size, params))
  storage = config.dataset.storage_size or None

  def images(batches: Iterator[dict[str, np.ndarray]]) -> Iterator[np.ndarray]:
    for i, batch in enumerate(batches):
      out = view(train.to_float(batch["image"]), batch["bbox"], jax.random.key(i))[0]
      yield np.asarray(out)[np.asarray(batch["mask"])] if "mask" in batch else np.asarray(out)

  loader = input_pipeline.train_loader(builder, "train", batch_size=options["batch_size"], seed=config.seed,
                                       image_size=storage, worker_count=0, cache_mb=config.dataset.cache_mb)
  variables = sr.train(images(iter(loader)), low=low, size=size, num_steps=options["num_steps"],
                       lr=options["lr"], seed=config.seed, widths=tuple(options["widths"]), progress=progress)
  split = config.get("validation_split") or "train"
  held = np.concatenate(list(itertools.islice(images(input_pipeline.eval_batches(
      builder, split, batch_size=config.eval_batch_size, image_size=storage)), 8)))
  bicubic = degrade.lowres(held, np.zeros((len(held), 4), np.float32), jax.random.key(0), size=size, low=low)[0]
  summary = {"split": split, "images": len(held), "low": low, "size": size, **options,
             "psnr_bicubic": round(float(sr.psnr(bicubic, held)), 3),
             "psnr_sr": round(float(sr.psnr(sr.upsample(variables, held, low=low, size=size), held)), 3)}
  return variables, summary


# How each network is trained: (config, builder, source view spec, progress bar) -> (variables, summary).
TRAINERS: dict[str, Callable[..., tuple[Variables, dict]]] = {"sr": _train_sr}


def prepare(config: ml_collections.ConfigDict, workdir: str, builder: Any, say: Callable[[str], None]
            ) -> dict[str, Variables]:
  """The variables of every network the views need, trained now (process 0; the others wait and read them)
  or read back from stages/<name>/ when a result.json says it was trained before."""
  out = {}
  for name, source in needed(config).items():
    stage = os.path.join(workdir, "stages", name)
    path, result = os.path.join(stage, "variables"), os.path.join(stage, "result.json")
    with multihost.primary_first(f"view network {name}"):
      if not os.path.exists(result):
        variables, summary = TRAINERS[name](config, builder, source, config.progress_bar)
        shutil.rmtree(path, ignore_errors=True)  # a save interrupted before result.json
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(os.path.abspath(path), jax.device_get(variables))
        checkpointer.wait_until_finished()
        fileio.write_text(result, json.dumps(summary, indent=2))
        say(f"stage {name}: trained on view {source!r}; {summary['split']} PSNR {summary['psnr_sr']:.2f} dB against "
            f"{summary['psnr_bicubic']:.2f} dB for bicubic upsampling ({summary['images']} images)")
      else:
        say(f"stage {name}: finished earlier, skipping")
    out[name] = ocp.StandardCheckpointer().restore(os.path.abspath(path))
  return out
