"""Times the fused CQD train step of cqd_jax against a plain-PyTorch reference of the same computation.

    python -m benchmarks.step [--models=small_cnn,resnet18,vgg_m,efficientnet_lite0] [--sizes=112,224]
        [--batch=32] [--repeats=N] [--json=out.json]

For each model and input size: the jitted fused step of method "cqd" (cqd_jax.train.jit_train_step, built as
the experiment runner builds it; teacher = the same architecture; view A = box crop, B = crop + lowres; the
paper's optimizer and distillation settings; augmentation off) and `benchmarks.torch_reference.CQDStep` (eager
PyTorch, channels_last) start from the same weights and one stored uint8 batch of round(size * 8 / 7) px
images already on the device. Each is called once untimed (JAX compiles), then they are timed interleaved
(jax, torch, jax, torch, ...) and the median images/s of each is reported, with jax/torch. FLOPs per step
come from XLA's cost analysis of the compiled JAX step and are used for both frameworks' FLOP/s, which are
also given as a fraction of a float32 matmul peak measured at the start of the run. --json writes every
number plus the machine's facts. Without torch only the JAX column is measured.
Timings depend on the machine and its load; run it on an otherwise idle machine.
"""

import datetime
import json
import os
import platform
import statistics
import time
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cqd_jax import config_lib
from cqd_jax import degrade
from cqd_jax import models
from cqd_jax import train
from cqd_jax.methods import METHODS

try:
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top (needs torch)
except ImportError:
  torch = torch_reference = None

_MODELS = flags.DEFINE_list("models", ["small_cnn", "resnet18", "vgg_m", "efficientnet_lite0"], "Models to time.")
_SIZES = flags.DEFINE_list("sizes", ["112", "224"], "Input sizes (px) of the views.")
_BATCH = flags.DEFINE_integer("batch", 32, "Batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed steps per framework, model and size (median reported).")
_CLASSES = flags.DEFINE_integer("classes", 200, "Number of classes (CUB's 200).")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 0, "torch's intra-op threads (0: torch's default).")
_JSON = flags.DEFINE_string("json", None, "Write all numbers and machine facts to this JSON file.")

_PEAK_N = 2048  # matmul side for the peak
_PEAK_REPEATS = 5
VIEW_A = "crop"  # view B is VIEW_A + "+lowres", the CPU experiment's "lowres" degradation


def storage_size(size: int) -> int:
  """Stored image side for `size` px views, as config_lib.cpu_subset_base (room for the box crop)."""
  return round(size * 8 / 7)


def paper_low(size: int) -> int:
  """lowres's intermediate size at `size` px: the paper's 50 px at 224, scaled (as cpu_subset_base)."""
  return round(50 * size / 224)


def make_batch(size: int, batch: int, classes: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A stored batch: random uint8 images, boxes covering 40-100% of each side, random labels.

  The images are 8 x 8 blocks of random colour plus pixel noise: pixel noise alone is flat grey after the
  low-resolution view, and BatchNorm statistics of near-constant features make gradients ill-conditioned.
  """
  rng = np.random.default_rng(seed)
  side = storage_size(size)
  block = -(-side // 8)
  coarse = rng.uniform(0.0, 255.0, (batch, 8, 8, 3))
  images = np.repeat(np.repeat(coarse, block, axis=1), block, axis=2)[:, :side, :side]
  images = np.clip(images + rng.normal(0.0, 20.0, images.shape), 0.0, 255.0).astype(np.uint8)
  lo, hi = rng.uniform(0.0, 0.3, (batch, 2)), rng.uniform(0.7, 1.0, (batch, 2))
  return {"image": images,
          "bbox": np.concatenate([lo, hi], axis=1).astype(np.float32),
          "label": rng.integers(0, classes, batch).astype(np.int32)}


def base_config() -> ml_collections.ConfigDict:
  """The paper's optimizer and distillation settings (SGD momentum 0.9, weight decay 5e-4, T = 10, lambda 200)."""
  config = config_lib.paper_base("benchmark", distill_weight=200.0)
  config.num_steps = 3000  # the schedule's length (30 epochs of 12,800 images); it does not change a step's cost
  return config


class JaxStep:
  """The compiled fused CQD step of `model_name` with its train state, teacher and batch on the device.

  Built as cqd_jax.experiment.Runner.train builds it (jit_train_step on the data mesh, state donated); it is
  lowered and compiled explicitly so that its compile time and XLA's cost analysis come from the program that
  is timed.
  """

  def __init__(self, model_name: str, size: int, batch: dict[str, np.ndarray], classes: int,
               config: ml_collections.ConfigDict | None = None, cached_teacher: bool = False, **options: Any):
    """`cached_teacher`: the step reads the teacher's logits from a table (config.cache_teacher)."""
    config = config or base_config()
    mesh = train.data_mesh()
    self.num_devices = mesh.size
    self.model = models.get_model(model_name, classes, **options)
    # models.init_variables's program, compiled once for both.
    init = jax.jit(lambda rng: self.model.init(rng, jnp.zeros((1, size, size, 3), jnp.float32), train=False))
    self.student_variables, self.teacher_variables = init(jax.random.key(0)), init(jax.random.key(1))
    tx, _ = train.make_optimizer(config.optimizer, config.num_steps)
    self.state = train.replicate(
        train.create_train_state(self.model, jax.random.key(0), size, tx, self.student_variables), mesh)
    params = config.degrade_params.to_dict()
    view_a = degrade.make_view(VIEW_A, size, params)
    self.teacher = train.replicate({"teacher": self.teacher_variables}, mesh)
    if cached_teacher:  # the batch is the whole "data set": records 0..n-1
      batch = {**batch, "record": np.arange(len(batch["label"]), dtype=np.int32)}
      table = train.teacher_logits_table(self.model.apply, self.teacher_variables, view_a,
                                         [{**batch, "mask": np.ones(len(batch["label"]), bool)}], mesh,
                                         ynn_fusions=config.xla_cpu_ynn_fusions)
      self.teacher = train.replicate({"teacher": table}, mesh)
    self.batch = train.shard_batch(batch, mesh)
    step = train.jit_one_model_step(
        mesh, METHODS["cqd"], model=self.model, view_a=view_a,
        view_b=degrade.make_view(f"{VIEW_A}+lowres", size, params), image_size=size, kd=config.kd,
        cached=cached_teacher, flip=False, crop_margin=0.0, ynn_fusions=config.xla_cpu_ynn_fusions)
    start = time.perf_counter()
    self.compiled = step.lower(self.state, self.teacher, self.batch).compile()
    self.compile_s = time.perf_counter() - start

  def flops(self) -> float | None:
    """FLOPs of one step by XLA's cost analysis of the compiled program (a dict, or a list of one per module).

    The analysed program is the per-device SPMD partition, so its count is multiplied by the mesh's size.
    """
    analysis = self.compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
      analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) * self.num_devices if flops and flops > 0 else None

  def __call__(self) -> float:
    """One step; returns its loss once the whole step has finished."""
    self.state, metrics = self.compiled(self.state, self.teacher, self.batch)
    jax.block_until_ready(self.state)
    return float(metrics["loss"])


class TorchStep:
  """torch_reference.CQDStep on copies of a JaxStep's student and teacher weights and the same batch."""

  def __init__(self, model_name: str, size: int, batch: dict[str, np.ndarray], classes: int,
               student_variables: Any, teacher_variables: Any, config: ml_collections.ConfigDict | None = None,
               device: str = "cpu", **options: Any):
    config = config or base_config()
    nets = []
    for variables in (student_variables, teacher_variables):
      net = torch_reference.get_model(model_name, classes, **options)
      torch_reference.load_flax_variables(net, model_name, jax.device_get(variables))
      nets.append(net.to(device))
    opt, distill = config.optimizer, config.kd
    if distill.loss != "soft_ce" or distill.t2_scale or opt.name != "sgd" or opt.nesterov:
      raise ValueError("the torch reference implements soft CE without T^2 and SGD without Nesterov only")
    self.step = torch_reference.CQDStep(
        *nets, view_a=VIEW_A, size=size, low=config.degrade_params.lowres.get("low"), lr=opt.lr,
        momentum=opt.momentum, weight_decay=opt.weight_decay, temperature=distill.temperature,
        weight=distill.weight)
    self.inputs = (torch.from_numpy(batch["image"]).to(device), torch.from_numpy(batch["bbox"]).to(device),
                   torch.from_numpy(batch["label"]).long().to(device))

  def __call__(self) -> float:
    return float(self.step(*self.inputs))  # .item() waits for the device


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
  """Seconds of `repeats` calls of each fn, called in turn (one of each per round) so load drifts hit all."""
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return times


def compare_variants(steps: dict[str, Callable[[], float]], repeats: int, batch: int
                     ) -> tuple[dict[str, float], dict[str, float]]:
  """Calls each step once untimed (compile, warm-up), then times them interleaved: (img/s, first-step loss)
  by variant."""
  first = {name: fn() for name, fn in steps.items()}
  times = time_interleaved(steps, repeats)
  return {k: batch / statistics.median(v) for k, v in times.items()}, first


def variant_table(variants: Callable[[str, int, dict[str, np.ndarray]], dict[str, Callable[[], float]]],
                  labels: Sequence[str]) -> None:
  """For each --models and --sizes, the steps `variants(model, size, batch)` builds (the same weights and batch)
  compared by `compare_variants`; prints per variant img/s, speed-up over the first and the first-step
  loss's relative difference from the first's (float rounding when the variants compute the same step)."""
  print(f"batch {_BATCH.value}, {_CLASSES.value} classes, median of {_REPEATS.value} interleaved steps; "
        f"speed-up and first-loss difference against {labels[0]}")
  print(f"{'model':<20}{'size':>5}  " + "".join(f"{n[:22]:>24}" for n in labels))
  for name in _MODELS.value:
    for size in map(int, _SIZES.value):
      steps = variants(name, size, make_batch(size, _BATCH.value, _CLASSES.value))
      rates, first = compare_variants(steps, _REPEATS.value, _BATCH.value)
      base = next(iter(steps))
      cells = [f"{rates[k]:.1f} ({rates[k] / rates[base]:.2f}x, {abs(first[k] - first[base]) / abs(first[base]):.0e})"
               for k in steps]
      print(f"{name:<20}{size:>5}  " + "".join(f"{c:>24}" for c in cells), flush=True)
      del steps


def matmul_peak(torch_device: str) -> dict[str, float]:
  """FLOP/s of a jitted float32 [N, N] x [N, N] matmul (median of a few, after a compiling call); torch's too."""
  n = _PEAK_N
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  fns = {"jax": lambda: jax.block_until_ready(matmul(a, b))}
  if torch is not None:
    ta, tb = (torch.from_numpy(np.array(m)).to(torch_device) for m in (a, b))
    sync = torch.cuda.synchronize if torch_device == "cuda" else lambda: None
    fns["torch"] = lambda: (torch.mm(ta, tb), sync())
  for fn in fns.values():
    fn()
  times = time_interleaved(fns, _PEAK_REPEATS)
  return {name: 2 * n**3 / statistics.median(t) for name, t in times.items()}


def machine_facts() -> dict[str, Any]:
  """Versions, backend and CPU facts recorded with the numbers."""
  cpu = platform.processor()
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
  return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
          "jax": jax.__version__, "backend": jax.default_backend(), "devices": jax.device_count(),
          "device_kind": jax.devices()[0].device_kind, "torch": torch.__version__ if torch else None,
          "torch_threads": torch.get_num_threads() if torch else None, "cpu_count": os.cpu_count(), "cpu": cpu,
          "python": platform.python_version(), "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _fmt(value: float | None, spec: str) -> str:
  return "n/a" if value is None else format(value, spec)


def main(argv: list[str]) -> None:
  del argv
  n, repeats, classes = _BATCH.value, _REPEATS.value, _CLASSES.value
  on_gpu = jax.default_backend() == "gpu" and torch is not None and torch.cuda.is_available()
  torch_device = "cuda" if on_gpu else "cpu"  # the same kind of device as JAX's
  if torch is not None and _TORCH_THREADS.value:
    torch.set_num_threads(_TORCH_THREADS.value)
  facts = machine_facts()
  peak = matmul_peak(torch_device)
  torch_facts = f"{facts['torch']} ({torch_device}, {facts['torch_threads']} threads)" if torch else "absent"
  print(f"{facts['date']}  jax {facts['jax']} ({facts['backend']}, {facts['device_kind']}), torch {torch_facts}, "
        f"{facts['cpu_count']} CPUs"
        f"\nbatch {n}, {classes} classes, median of {repeats} interleaved steps; float32 matmul peak "
        f"({_PEAK_N}^2): jax {peak['jax'] / 1e9:.0f} GFLOP/s"
        + (f", torch {peak['torch'] / 1e9:.0f} GFLOP/s" if "torch" in peak else ""), flush=True)
  header = (f"{'model':<20}{'size':>5}{'jax img/s':>11}{'torch img/s':>13}{'jax/torch':>11}{'GFLOP/step':>12}"
            f"{'jax GFLOP/s':>13}{'torch GFLOP/s':>15}{'jax %peak':>11}{'torch %peak':>13}")
  print(header, flush=True)
  config = base_config()
  rows = []
  for name in _MODELS.value:
    for size in map(int, _SIZES.value):
      config.degrade_params.lowres.low = paper_low(size)
      batch = make_batch(size, n, classes)
      jax_step = JaxStep(name, size, batch, classes, config)
      fns: dict[str, Callable[[], float]] = {"jax": jax_step}
      first: dict[str, float] = {}
      if torch_reference is not None:
        fns["torch"] = TorchStep(name, size, batch, classes, jax_step.student_variables,
                                 jax_step.teacher_variables, config, torch_device)
      for framework, fn in fns.items():
        start = time.perf_counter()
        first[f"{framework}_first_loss"] = fn()
        first[f"{framework}_first_step_s"] = time.perf_counter() - start
      times = time_interleaved(fns, repeats)
      flops = jax_step.flops()
      row = {"model": name, "size": size, "storage_size": storage_size(size), "batch": n,
             "jax_compile_s": jax_step.compile_s, "gflop_per_step": flops / 1e9 if flops else None, **first}
      for framework in ("jax", "torch"):
        t = times.get(framework)
        median = statistics.median(t) if t else None
        row[f"{framework}_step_s"] = t
        row[f"{framework}_median_s"] = median
        row[f"{framework}_img_per_s"] = n / median if median else None
        row[f"{framework}_gflop_per_s"] = flops / median / 1e9 if median and flops else None
        row[f"{framework}_pct_of_peak"] = 100 * flops / median / peak["jax"] if median and flops else None
      row["jax_over_torch"] = row["jax_img_per_s"] / row["torch_img_per_s"] if row["torch_img_per_s"] else None
      rows.append(row)
      print(f"{name:<20}{size:>5}{_fmt(row['jax_img_per_s'], '.1f'):>11}{_fmt(row['torch_img_per_s'], '.1f'):>13}"
            f"{_fmt(row['jax_over_torch'], '.2f'):>11}{_fmt(row['gflop_per_step'], '.1f'):>12}"
            f"{_fmt(row['jax_gflop_per_s'], '.1f'):>13}{_fmt(row['torch_gflop_per_s'], '.1f'):>15}"
            f"{_fmt(row['jax_pct_of_peak'], '.1f'):>11}{_fmt(row['torch_pct_of_peak'], '.1f'):>13}", flush=True)
      del jax_step, fns  # frees this model's buffers before the next one is built
  if _JSON.value:
    out = {"machine": facts, "settings": {"batch": n, "repeats": repeats, "classes": classes, "view_a": VIEW_A,
                                          "view_b": f"{VIEW_A}+lowres", "torch_device": torch_device},
           "matmul_peak_gflop_per_s": {k: v / 1e9 for k, v in peak.items()}, "results": rows}
    with open(_JSON.value, "w") as f:
      json.dump(out, f, indent=2)
    print(f"wrote {_JSON.value}")


if __name__ == "__main__":
  app.run(main)
