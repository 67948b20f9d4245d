"""Methods as data (cqd_jax.methods): a config defines a method as streams and loss terms; wrong names and
shapes are refused before training with the config key; adapters bring any student feature to its target's
shape and train with the student without becoming part of its exported variables."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from cqd_jax import config_lib, degrade, experiment, losses, methods, models, train

STUDENT = dict(view="b", trained=True)
TEACHER = dict(view="a", source="train_a")
CE = dict(loss="ce", inputs=("student.logits", "label"))


def _config_with(**method_defs):
  """The tiny config with `method_defs`, running train_a and them."""
  config = helpers.tiny_experiment_config()
  config.method_defs = method_defs
  config.methods = ("train_a", *method_defs)
  return config


@pytest.mark.parametrize("define, match", [
    (dict(streams={"student": STUDENT, "teacher": dict(view="a", source="train_c")}, terms=(CE,)),
     r"config key method_defs\.m\.streams\.teacher\.source='train_c': unknown method; known: train_a, .*, m$"),
    (dict(streams={"student": STUDENT}, terms=(dict(loss="ce", inputs=("student.logitz", "label")),)),
     r"config key method_defs\.m\.terms\[0\]\.inputs: unknown output 'student\.logitz'; known: label, "
     r"image\.a, image\.b, student\.logits, student\.features\.<name>$"),
    (dict(streams={"student": STUDENT, "teacher": TEACHER},
          terms=(CE, dict(loss="feature_mse", inputs=("student.features.stage9", "teacher.features.stage1")))),
     r"config key method_defs\.m\.terms\[1\]\.inputs: 'student\.features\.stage9' is not an output of its model "
     r"'model'; its features: pre_logits, stage1, stage2$"),
    (dict(streams={"student": STUDENT}, terms=(dict(loss="kl", inputs=("student.logits", "label")),)),
     r"config key method_defs\.m\.terms\[0\]\.loss='kl': unknown loss; known: ce, kd, soft_ce, .*rkd_angle$"),
    (dict(streams={"student": STUDENT, "teacher": TEACHER},
          terms=(dict(loss="feature_mse", inputs=("student.logits", "teacher.logits"), adapter="mlp"),)),
     r"config key method_defs\.m\.terms\[0\]\.adapter='mlp': unknown adapter; known: conv1x1, pixel_shuffle, "
     r"image_decoder$"),
    (dict(streams={"student": STUDENT, "teacher": TEACHER},
          terms=(dict(loss="feature_mse", inputs=("student.features.stage1", "teacher.features.stage2")),)),
     r"config key method_defs\.m\.terms\[0\]: student\.features\.stage1 \[32, 32, 8\] and teacher\.features\.stage2 "
     r"\[16, 16, 16\] differ in shape \(per example\); give the term an adapter \(conv1x1, pixel_shuffle, "
     r"image_decoder\)$"),
    (dict(streams={"student": STUDENT, "other": dict(view="a", trained=True)}, terms=(CE,)),
     r"config key method_defs\.m\.streams: exactly one stream must have trained=True$"),
    (dict(streams={"student": dict(view="c", trained=True)}, terms=(CE,)),
     r"config key method_defs\.m\.streams\.student\.view='c': known views: a, b, ab$"),
    (dict(streams={"student": STUDENT, "teacher": TEACHER},
          terms=(CE, dict(loss="kd", inputs=("student.logits", "teacher.logits"), temprature=4.0))),
     r"config key method_defs\.m\.terms\[1\]: loss 'kd' has no option 'temprature'; its options: loss, "
     r"temperature, t2_scale \(and weight, adapter, metric\)$"),
    (dict(streams={"student": STUDENT, "teacher": dict(TEACHER, cache=True)},
          terms=(dict(loss="feature_mse", inputs=("student.features.stage1", "teacher.features.stage1")),)),
     r"config key method_defs\.m\.streams\.teacher\.cache: a cached stream keeps its logits only, but a term "
     r"reads its features$"),
    (dict(streams={"student": dict(STUDENT, size=16)}, terms=(CE,)),
     r"config key method_defs\.m\.streams\.student: unknown field 'size'; known: cache, image_size, model, "),
])
def test_a_wrong_method_definition_is_one_error_naming_the_key(define, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(_config_with(m=define))


def test_unknown_names_cycles_and_replaced_keys_are_refused(tmp_path):
  config = helpers.tiny_experiment_config()
  config.methods = ("train_a", "nope")
  with pytest.raises(config_lib.ConfigError, match=r"^config key methods: unknown method 'nope'; known: train_a, "
                                                    r"train_b, a_then_b, cqd, a_cqd, mixture_ab, train_a_small, "
                                                    r"train_b_small, cqd_small, cqd_to_small, train_b_low, "
                                                    r"kd, pd_assistant, pixel_distillation, pixel_distillation_isr, "
                                                    r"horkd$"):
    config_lib.validate(config)
  loop = _config_with(x=dict(streams={"student": dict(STUDENT, source="y")}, terms=(CE,)),
                      y=dict(streams={"student": dict(STUDENT, source="x")}, terms=(CE,)))
  with pytest.raises(config_lib.ConfigError, match=r"the methods' sources form a cycle: x -> y -> x"):
    config_lib.validate(loop)
  with pytest.raises(config_lib.ConfigError, match=r"method_defs\.cqd: 'cqd' is a built-in method"):
    config_lib.validate(_config_with(cqd=dict(streams={"student": STUDENT}, terms=(CE,))))
  old = helpers.tiny_experiment_config()
  old.distill = dict(loss="soft_ce", temperature=10.0, weight=50.0, t2_scale=False, cache_teacher=False)
  with pytest.raises(config_lib.ConfigError, match=r"^config key distill: no longer used; replaced by config\.kd "):
    config_lib.validate(old)
  # A workdir written before the change (its config.json has distill) is refused, not silently retrained.
  config_lib.save(old, str(tmp_path))
  refused = r"config\.json was written before methods became streams and loss terms \(config key distill: now "
  with pytest.raises(config_lib.ConfigError, match=refused + r"config\.kd .*another --workdir$"):
    config_lib.save(helpers.tiny_experiment_config(), str(tmp_path))


@pytest.mark.parametrize("adapter", ["conv1x1", "pixel_shuffle"])
@pytest.mark.parametrize("size", [56, 112, 224])
def test_adapters_reach_the_teachers_feature_shape(adapter, size):
  """A ResNet-18 student at 56, 112 or 224 px against a ResNet-50 teacher at 224 px (shapes only)."""
  def features(name, px):
    model = models.get_model(name, 10)
    x = jax.ShapeDtypeStruct((2, px, px, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    return jax.eval_shape(lambda v, x: models.apply_with_features(model, v, x)[1], variables, x)

  student, teacher = features("resnet18", size), features("resnet50", 224)
  names = ["stage2", "stage3", "pre_logits"] if adapter == "conv1x1" else ["stage2", "stage3"]
  for name in names:
    target = teacher[name].shape
    module = models.ADAPTERS[adapter](target=tuple(target[1:]))
    out = jax.eval_shape(lambda x: module.init_with_output(jax.random.key(0), x)[0],
                         jax.ShapeDtypeStruct(student[name].shape, jnp.float32))
    assert out.shape == target, (adapter, size, name, student[name].shape)
  if size == 56:
    assert student["stage3"].shape[1:3] == (4, 4) and teacher["stage3"].shape[1:3] == (14, 14)


def test_feature_mse_is_zero_only_for_equal_features():
  x = jax.random.normal(jax.random.key(0), (4, 3, 3, 5))
  np.testing.assert_array_equal(losses.feature_mse(x, x), np.zeros(4))
  y = x.at[1].add(1.0)
  np.testing.assert_allclose(losses.feature_mse(x, y), [0.0, 1.0, 0.0, 0.0], atol=1e-6)


def test_a_feature_term_across_input_sizes_trains_its_adapter_and_is_not_exported():
  """A 16 px student matches the 32 px teacher's stage1 map (32x32x8) from its own (16x16x8) through a
  pixel-shuffle adapter: one step changes the adapter and the model; TrainState.variables leaves it out."""
  spec = dict(streams={"student": dict(STUDENT, image_size=16), "teacher": TEACHER},
              terms=(CE, dict(loss="feature_mse", inputs=("student.features.stage1", "teacher.features.stage1"),
                              weight=3.0, adapter="pixel_shuffle")))
  config = _config_with(hint=spec)
  config_lib.validate(config)
  method = methods.resolve(methods.get_method("hint", config), config)
  assert [(n, s.image_size) for n, s in method.streams] == [("student", 16), ("teacher", helpers.IMAGE_SIZE)]
  model = helpers.tiny_model()
  shapes = experiment.output_shapes(method, lambda key: model)  # one tiny network for every model section
  adapter_params = experiment.init_adapters(method, shapes, jax.random.key(3))
  assert set(adapter_params) == {"feature_mse"}
  tx, _ = train.make_optimizer(helpers.optimizer_config(), 10)
  state = train.create_train_state(model, jax.random.key(0), 16, tx, adapter_params=adapter_params)
  assert set(state.variables["params"]) == set(helpers.init_variables(model, 0)["params"])
  mesh = train.data_mesh()
  views = {("a", helpers.IMAGE_SIZE): degrade.make_view(helpers.VIEW_A, helpers.IMAGE_SIZE),
           ("b", 16): degrade.make_view(helpers.VIEW_B, 16, helpers.DEGRADE_PARAMS)}
  step = train.jit_train_step(mesh, method=method, views=views, frozen_apply={"teacher": model.apply},
                              adapters=experiment.adapter_modules(method, shapes), flip=True)
  before = helpers.flatten(jax.device_get(state.params))
  teacher = helpers.init_variables(model, seed=100)
  batch = train.shard_batch(helpers.tiny_batch(8, seed=1), mesh)
  state, metrics = step(state, {"teacher": teacher}, batch)
  after = helpers.flatten(jax.device_get(state.params))
  np.testing.assert_allclose(float(metrics["loss"]), float(metrics["ce"]) + 3.0 * float(metrics["feature_mse"]),
                             rtol=1e-5)
  changed = {k for k in before if np.abs(before[k] - after[k]).max() > 0}
  assert any(k.startswith("['adapters']") for k in changed) and any(k.startswith("['head']") for k in changed)
  assert "adapters" not in state.variables["params"]


DOCS_BLOCK = re.compile(r"<!-- adding-a-method -->\s*```python\n(.*?)```", re.S)


def test_docs_adding_a_method_runs():
  """docs/concepts.md's method_defs snippet, executed on the tiny config: the method validates and its terms
  are in the metrics of a step."""
  text = open(f"{helpers.REPO}/docs/concepts.md").read()
  match = DOCS_BLOCK.search(text)
  assert match, "docs/concepts.md has no <!-- adding-a-method --> python block"
  config = helpers.tiny_experiment_config()
  exec(match.group(1), {"config": config})  # pylint: disable=exec-used
  name = config.methods[-1]
  assert name in config.method_defs
  config_lib.validate(config)
  method = methods.get_method(name, config)
  step = helpers.tiny_step(method, train.data_mesh(), kd=config.kd, flip=True)
  tx, _ = train.make_optimizer(helpers.optimizer_config(), 10)
  state = train.create_train_state(helpers.tiny_model(), jax.random.key(0), helpers.IMAGE_SIZE, tx)
  teacher = helpers.init_variables(helpers.tiny_model(), seed=100)
  _, metrics = step(state, {n: teacher for n in method.frozen},
                    train.shard_batch(helpers.tiny_batch(8, seed=1), train.data_mesh()))
  assert {t.metric for t in method.terms} <= set(metrics) and np.isfinite(float(metrics["loss"]))


def test_two_frozen_teachers_from_two_stages():
  """Several frozen streams: a student distilled from the A model and the B model at once. The plan trains
  both sources first (train_b although config.methods does not name it); the step runs both."""
  kd = lambda t: dict(loss="kd", inputs=("student.logits", f"{t}.logits"), weight=1.0, temperature=4.0,
                      metric=f"kd_{t}")
  config = _config_with(two=dict(streams={"student": STUDENT, "teacher_a": TEACHER,
                                          "teacher_b": dict(view="b", source="train_b")},
                                 terms=(CE, kd("teacher_a"), kd("teacher_b"))))
  config_lib.validate(config)
  stages = experiment.plan(config)
  assert [(s.name, s.sources) for s in stages] == [
      ("train_a@crop", ()), ("lowres/train_b", ()),
      ("lowres/two", (("train_a", "train_a@crop"), ("train_b", "lowres/train_b")))]
  method = methods.get_method("two", config)
  step = helpers.tiny_step(method, train.data_mesh(), flip=True)
  tx, _ = train.make_optimizer(helpers.optimizer_config(), 10)
  model = helpers.tiny_model()
  state = train.create_train_state(model, jax.random.key(0), helpers.IMAGE_SIZE, tx)
  frozen = {"teacher_a": helpers.init_variables(model, seed=100), "teacher_b": helpers.init_variables(model, seed=101)}
  _, metrics = step(state, frozen, train.shard_batch(helpers.tiny_batch(8, seed=1), train.data_mesh()))
  assert float(metrics["kd_teacher_a"]) != float(metrics["kd_teacher_b"])
  assert {"teacher_a_agreement", "teacher_b_agreement"} <= set(metrics)
  np.testing.assert_allclose(float(metrics["loss"]),
                             sum(float(metrics[k]) for k in ("ce", "kd_teacher_a", "kd_teacher_b")), rtol=1e-5)


def test_a_teacher_assistant_student_chain_is_a_config_edit():
  """Teacher -> assistant -> student (Pixel Distillation's TAS): the assistant learns on A from the frozen
  teacher, the student on B from the frozen assistant. The assistant reads A only, so it is shared by every
  degradation with that view A, like the teacher; the plan puts each stage after its source."""
  kd = lambda src: dict(loss="kd", inputs=("student.logits", f"{src}.logits"), weight=1.0, temperature=4.0)
  config = _config_with(
      assistant=dict(streams={"student": dict(view="a", trained=True), "teacher": TEACHER},
                     terms=(CE, kd("teacher"))),
      tas=dict(streams={"student": STUDENT, "assistant": dict(view="a", source="assistant")},
               terms=(CE, kd("assistant"))))
  config.methods = ("tas",)
  config_lib.validate(config)
  assert [(s.name, s.sources) for s in experiment.plan(config)] == [
      ("train_a@crop", ()), ("assistant@crop", (("train_a", "train_a@crop"),)),
      ("lowres/tas", (("assistant", "assistant@crop"),))]
