r"""Demo: cross quality distillation on the embedded procedural "birds", on a laptop CPU.

20 fine-grained classes (5 colour layouts x 4 stripe orientations on the wing), objects at random places
on clutter, 64 px stored images, 32 px model input. Domain A is the object crop; the degradations are
    lowres    B = crop, downsampled to 8 px and back up (stripes mostly lost, colours kept), and
    localize  B = the whole cluttered image (the object is small and surrounded by distractors).
One teacher (train_a on the crop) is trained once and reused by every method of both degradations.

  python -m cqd_jax.main --config=configs/demo.py --workdir=/tmp/cqd_demo
  python -m cqd_jax.main --config=configs/demo.py:edges --workdir=/tmp/cqd_edges   # one degradation
  python -m cqd_jax.main --config=configs/demo.py:compare --workdir=/tmp/cqd_compare
  python -m cqd_jax.main --config=configs/demo.py:multires --workdir=/tmp/cqd_multires
  python -m cqd_jax.main --config=configs/demo.py:compression --workdir=/tmp/cqd_compression
  python -m cqd_jax.main --config=configs/demo.py:sr --workdir=/tmp/cqd_sr

The argument after ':' picks degradations (comma-separated) from: lowres, localize, edges, distort,
localize_lowres; or it is "compare": the low-resolution comparison (config_lib.comparison) of the Table 1
baselines with the students that read the 8 px crop itself (kd, Pixel Distillation, HORKD), all small_cnn,
writing comparison.md; or "multires": the paper's multi-resolution model (Table 3, cqd_jax/multires.py) on
lowres, train_a and a_cqd as the experts, a router on the images' Fourier magnitudes picking one per test
image, and mixture_ab beside them, writing multires.md; or "compression": the paper's Table 2 on localize
(a small_cnn a quarter as wide as the teacher's as the shallow network, writing compression.md); or "sr": the
paper's Table 4, the 8 px crop upsampled bicubically and by an SRCNN trained first (stage sr).
"""

import ml_collections

from cqd_jax import config_lib

# High-quality view A and degraded view B of every demo degradation (cqd_jax.degrade op names, '+' composes).
DEGRADATIONS = {
    "lowres": {"a": "crop", "b": "crop+lowres"},
    "localize": {"a": "crop", "b": "full"},
    "edges": {"a": "crop", "b": "crop+edges"},
    "distort": {"a": "crop", "b": "crop+distort"},
    "localize_lowres": {"a": "crop", "b": "full+lowres"},
}


def get_config(arg: str = "lowres,localize") -> ml_collections.ConfigDict:
  """The demo config; `arg` lists the degradations to run, or is "compare", "multires", "compression" or "sr"."""
  variant = arg in ("compare", "multires", "compression", "sr")
  degradations = config_lib.pick_degradations("lowres,localize" if variant else arg, DEGRADATIONS, "configs/demo.py")
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "cqd_synthetic"
  config.dataset.data_dir = ""  # empty: <workdir>/data
  config.dataset.manual_dir = ""
  config.dataset.storage_size = 0  # images are resized to this square size when read; 0: as stored (64 px)
  config.dataset.worker_count = 0  # grain worker processes; 0 reads in the main process (enough here)
  config.dataset.cache_mb = 1024  # decoded training images kept in memory (MiB, per process); 5 MB here
  config.dataset.options = dict(num_classes=20, image_size=64, train_per_class=20, validation_per_class=10,
                                test_per_class=40, seed=0)
  config.eval_split = "test"

  config.image_size = 32
  config.degradations = degradations
  # 32 -> 8 -> 32 px is the paper's 224 -> 50 -> 224 ratio, a little stronger. The paper's TPS noise
  # (variance 4 px at 224 px) moves points by 0.3 px at 32 px, invisible here, so the demo uses 4x the
  # variance (std 4 px at 224 px, 0.6 px at 32 px).
  config.degrade_params = {"lowres": {"low": 8}, "distort": {"grid": 14, "variance": 16.0}}
  config.augment = dict(flip=True, crop_margin=0.0)  # crop_margin: random crops keeping the box (0 = off)

  config.methods = ("train_a", "train_b", "a_then_b", "cqd", "a_cqd", "mixture_ab")
  # init_from: "" (random) or a weights file (.safetensors/.npz/.pth, see data_prep/convert_weights.py).
  config.model = dict(name="small_cnn", options=dict(widths=(32, 64, 128, 256)), init_from="")
  config.teacher_model = dict(name="", options={}, init_from="")  # empty name: same architecture as the student
  config.compute_dtype = "float32"  # "bfloat16" on TPUs and GPUs: faster, parameters stay float32
  config.xla_cpu_ynn_fusions = "dot,reduce"  # XLA:CPU only: YNNPACK fusions, faster ("" = XLA's default)

  # The KD term of cqd and a_cqd: L = CE(g(z), y) + weight * CE(softmax(f(x)/T), softmax(g(z)/T)), as in
  # the paper (no T^2 factor).
  config.kd = dict(loss="soft_ce", temperature=10.0, weight=50.0, t2_scale=False)
  # Compute the teacher's logits once per image and flip (view A is fixed and flips are the only
  # augmentation here) instead of running the teacher in every step.
  config.cache_teacher = False
  # Methods of this experiment beyond the built-in ones (docs/concepts.md, docs/extending.md).
  config.method_defs = {}
  # Python files (or module names) imported before the config is checked: a new degradation, model, loss or
  # data set registers itself there (docs/extending.md).
  config.plugins = ()

  config.optimizer = dict(name="sgd", lr=0.05, end_lr=0.0025, schedule="linear", warmup_steps=20,
                          momentum=0.9, nesterov=False, weight_decay=5e-4)
  config.batch_size = 64
  config.num_steps = 500  # per stage (80 passes over the 400 training images); 0: num_epochs passes instead
  config.num_epochs = 0.0
  # The teacher's own length (experiment.Runner.length): 0 steps and 0 epochs = the stages' length, patience
  # 0 = no early stopping; the demo teacher's validation accuracy has levelled off by then.
  config.teacher_training = dict(num_steps=0, num_epochs=0.0, patience=0)
  config.eval_batch_size = 200

  config.log_every = 50
  config.checkpoint_every = 100
  # Checkpoints every checkpoint_every steps and at the end; the latest keep_checkpoints are kept, plus the
  # one scoring best on validation_split ("" = no validation while training; results use the last model).
  config.keep_checkpoints = 2
  config.validation_split = "validation"
  # A step whose loss or gradient is not finite is never applied: "stop" ends the run naming the step and
  # the last good checkpoint, "skip" counts such steps and goes on.
  config.on_nonfinite = "stop"
  config.progress_bar = True
  # Write comparison.md: each deployed model's accuracy, input size, parameters, FLOPs and measured images/s
  # (each model timed for at least compare_seconds and 3 batches, at the end of the run).
  config.compare = False
  config.compare_seconds = 1.0
  if arg == "compare":  # the students' small_cnn is the teacher's (config.model)
    config_lib.comparison(config, DEGRADATIONS["lowres"], small_model=dict(name="", options={}, init_from=""))
  if arg == "multires":  # the two experts and the A+B model, then the multires section (cqd_jax/multires.py)
    config.methods = ("train_a", "a_cqd", "mixture_ab")
    config.multires = dict(degradation="lowres", high="train_a", low="a_cqd", mixture="mixture_ab", steps=300,
                           learning_rate=0.01, l2=1e-4)
  if arg == "compression":
    small_cnn = lambda widths: dict(name="small_cnn", options=dict(widths=widths), init_from="")
    config_lib.compression(config, "localize", deep=config.model.to_dict(), small=small_cnn((8, 16, 32, 64)))
  if arg == "sr":
    config_lib.super_resolution(config, "crop")
    config.sr.num_steps = 300
  return config
