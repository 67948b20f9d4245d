"""Tests for cqd_jax.models: registry, shapes/dtypes, BatchNorm and dropout semantics, parameter counts."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cqd_jax.models import (MODELS, apply_with_features, count_params, flops_per_image, get_model, init_variables,
                            model_options, normalize_images, resnet, vgg)

NUM_CLASSES = 5
# Input width of the "head" Dense for each registered model (default options).
HEAD_FEATURES = {"small_cnn": 256, "vgg_m": 4096, "resnet18": 512, "resnet50": 2048, "vgg16": 4096,
                 "efficientnet_lite0": 1280, "efficientnet_lite1": 1280, "efficientnet_lite2": 1280}
# Models without BatchNorm (torchvision's VGG): only a "params" collection.
NO_BATCHNORM = {"vgg16"}
# Same code as efficientnet_lite0 with other widths/depths (tests/test_efficientnet.py checks those).
BUILT = sorted(set(MODELS) - {"efficientnet_lite1", "efficientnet_lite2"})
BATCHNORM = [name for name in BUILT if name not in NO_BATCHNORM]
# Compared op by op with their jitted program. Not resnet50 (resnet18's code path, a slow eager run) nor
# Lite0 (eager dispatch of the whole net takes ~30 s on CPU; tests/test_depthwise.py checks its depthwise
# convolution, the only code it does not share with the others, against XLA's).
EAGER = ["resnet18", "small_cnn", "vgg16", "vgg_m"]
# Their compiles take most of this module's time: marked slow, so that `-m "not slow"` leaves them out.
LARGE = {"resnet50", "vgg16", "efficientnet_lite0"}
# Named features (models/__init__.py) at default options: (stride, channels); None for vectors.
FEATURES = {
    "small_cnn": {"stage1": (1, 32), "stage2": (2, 64), "stage3": (4, 128), "stage4": (8, 256)},
    "vgg_m": {"stage1": (2, 96), "stage2": (8, 256), "stage3": (16, 512), "stage4": (16, 512), "stage5": (16, 512)},
    "vgg16": {"stage1": (1, 64), "stage2": (2, 128), "stage3": (4, 256), "stage4": (8, 512), "stage5": (16, 512)},
    "resnet18": {"stem": (2, 64), "stage1": (4, 64), "stage2": (8, 128), "stage3": (16, 256), "stage4": (32, 512)},
    "resnet50": {"stem": (2, 64), "stage1": (4, 256), "stage2": (8, 512), "stage3": (16, 1024),
                 "stage4": (32, 2048)},
    "efficientnet_lite0": {"stem": (2, 32), "stage1": (2, 16), "stage2": (4, 24), "stage3": (8, 40),
                           "stage4": (16, 80), "stage5": (16, 112), "stage6": (32, 192), "stage7": (32, 320)},
}
FEATURE_SIZE = 64
# Models with dropout on by default need a dropout rng in training mode.
DROPOUT = {"dropout": jax.random.key(42)}


def _images(seed: int, n: int, h: int = 32, w: int = 32) -> jax.Array:
  return jax.random.uniform(jax.random.key(seed), (n, h, w, 3), jnp.float32)


def _init(model, x):
  return model.init(jax.random.key(0), x, train=False)


def _param_shapes(model, h: int = 32) -> dict:
  variables = jax.eval_shape(lambda: _init(model, jnp.zeros((1, h, h, 3))))
  return jax.tree_util.tree_map(lambda a: a.shape, variables)


def _outputs(model, variables) -> dict:
  """Every forward pass the tests below read, as one compiled program per model (eager dispatch of the
  deeper nets costs tens of seconds on CPU): training mode on two batches of 3 that share two examples, eval
  mode with the initial and with the updated BatchNorm statistics, and inputs of other sizes. Eval mode treats
  examples independently, so its inputs of one size share a batch."""
  a, b, c, d = _images(2, 1), _images(3, 1), _images(4, 1), _images(10, 1)
  # Three per batch: with two, BatchNorm maps every channel to +-1 whatever the batch-mate, and in a deep
  # network (EfficientNet) example a's logits hardly depend on it.
  ab, ac = jnp.concatenate([a, b, d]), jnp.concatenate([a, c, d])

  def run(variables):
    train = lambda x: model.apply(variables, x, train=True, mutable=["batch_stats"], rngs=DROPOUT)
    (train_ab, updates), (train_ac, _) = train(ab), train(ac)
    evals = model.apply(variables, jnp.concatenate([_images(1, 2), _images(5, 2)]), train=False)
    out = {"train_ab": train_ab, "train_ac": train_ac, "eval": evals[:2], "eval_no_mutable": evals[2:],
           "sizes": [model.apply(variables, _images(6, 1, *hw), train=False) for hw in ((33, 47), (64, 64))]}
    out["features_logits"], out["features"], _ = apply_with_features(
        model, variables, _images(6, 1, FEATURE_SIZE, FEATURE_SIZE))
    _, out["train_features"], _ = apply_with_features(model, variables, ab, train=True, mutable=["batch_stats"],
                                                      rngs=DROPOUT)
    if "batch_stats" in variables:
      out["new_stats"] = updates["batch_stats"]
      trained = model.apply({"params": variables["params"], "batch_stats": updates["batch_stats"]},
                            jnp.concatenate([ab, ac, a]), train=False)
      out.update(eval_ab=trained[:3], eval_ac=trained[3:6], eval_a=trained[6:])
    return out

  return jax.jit(run)(variables)


@functools.lru_cache(maxsize=None)
def _built(name: str):
  """(name, model, its variables at 32 px, _outputs), made once per model for every test of this module."""
  model = get_model(name, NUM_CLASSES)
  variables = init_variables(model, jax.random.key(0), 32)
  return name, model, variables, _outputs(model, variables)


@pytest.fixture
def built(request):
  return _built(request.param)


def _models(names) -> list:
  """pytest params of `names`, the large networks marked slow."""
  return [pytest.param(n, marks=pytest.mark.slow) if n in LARGE else n for n in names]


@pytest.mark.parametrize("built", _models(BUILT), indirect=True)
def test_named_features(built):
  """Each model's named features have their documented stride and width, the same in training; pre_logits is
  what the head reads (its Dense gives the logits); collecting them changes no logit."""
  name, _, variables, outputs = built
  features = outputs["features"]
  assert set(features) == {*FEATURES[name], "pre_logits"}
  for feature, (stride, channels) in FEATURES[name].items():
    size = FEATURE_SIZE // stride
    assert features[feature].shape == (1, size, size, channels), feature
  assert features["pre_logits"].shape == (1, HEAD_FEATURES[name])
  head = variables["params"]["head"]
  np.testing.assert_allclose(features["pre_logits"] @ head["kernel"] + head["bias"], outputs["features_logits"],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(outputs["features_logits"], outputs["sizes"][1])
  assert {k: v.shape[1:] for k, v in outputs["train_features"].items()} == {
      k: v.shape[1:] for k, v in jax.eval_shape(lambda: apply_with_features(  # 32 px, the training batch's size
          _built(name)[1], variables, jnp.zeros((3, 32, 32, 3)))[1]).items()}


def test_features_cost_nothing_unless_asked(monkeypatch):
  """A plain apply lowers to the same program as one whose sow calls were removed: features that nobody
  collects are never in the compiled step."""
  model = get_model("resnet18", NUM_CLASSES)
  variables = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), 32))
  lower = lambda: jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])).lower(
      variables, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)).as_text()
  with_sow = lower()
  monkeypatch.setattr(resnet, "sow_feature", lambda *args: None)
  assert lower() == with_sow


def test_flops_per_image():
  """XLA's count for one image: quadratic in the input side, and ResNet-18 at 224 px near its published
  1.82 G multiply-adds (2 FLOPs each; XLA does not count the taps that fall on the zero padding)."""
  small = get_model("small_cnn", NUM_CLASSES, widths=(8, 16))
  variables = jax.eval_shape(lambda: init_variables(small, jax.random.key(0), 32))
  ratio = flops_per_image(small, variables, 64) / flops_per_image(small, variables, 32)
  assert 3.8 < ratio < 4.3, ratio  # the padding taps XLA leaves out weigh less in a larger image
  resnet = get_model("resnet18", 1000)
  flops = flops_per_image(resnet, jax.eval_shape(lambda: init_variables(resnet, jax.random.key(0), 224)), 224)
  assert 3.0e9 < flops < 2 * 1.82e9, flops


def test_registry_contents():
  assert set(MODELS) == {"small_cnn", "vgg_m", "resnet18", "resnet50", "vgg16", "efficientnet_lite0",
                         "efficientnet_lite1", "efficientnet_lite2"}
  assert set(HEAD_FEATURES) == set(MODELS)


@pytest.mark.parametrize("built", _models(BUILT), indirect=True)
def test_forward_shape_dtype_finite_and_head(built):
  name, _, variables, outputs = built
  assert set(variables) == ({"params"} if name in NO_BATCHNORM else {"params", "batch_stats"})
  for mode, n in (("eval", 2), ("train_ab", 3)):
    out = outputs[mode]
    assert out.shape == (n, NUM_CLASSES)
    assert out.dtype == jnp.float32
    assert np.all(np.isfinite(out))
  assert variables["params"]["head"]["kernel"].shape == (HEAD_FEATURES[name], NUM_CLASSES)
  assert variables["params"]["head"]["bias"].shape == (NUM_CLASSES,)


@pytest.mark.parametrize("built", _models(BATCHNORM), indirect=True)
def test_batchnorm_train_vs_eval(built):
  name, _, variables, outputs = built
  old, new = variables["batch_stats"], outputs["new_stats"]
  assert jax.tree_util.tree_structure(old) == jax.tree_util.tree_structure(new)
  changed = jax.tree_util.tree_map(lambda o, n: bool(jnp.any(o != n)), old, new)
  assert all(jax.tree_util.tree_leaves(changed)), "every BatchNorm must update its running stats"
  # Train mode normalises with batch statistics: example a's logits depend on its batch-mates.
  assert not np.allclose(outputs["train_ab"][0], outputs["train_ac"][0], rtol=1e-3, atol=0)
  # Eval mode uses running statistics (here the updated ones): examples are independent.
  np.testing.assert_allclose(outputs["eval_ab"][0], outputs["eval_ac"][0], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(outputs["eval_ab"][0], outputs["eval_a"][0], rtol=1e-4, atol=1e-4)
  if not name.startswith("efficientnet"):  # at random init its eval-mode logits barely depend on the input
    assert not np.allclose(outputs["eval_ab"][1], outputs["eval_ac"][1], rtol=1e-3, atol=0)


@pytest.mark.parametrize("built", _models(BUILT), indirect=True)
def test_eval_does_not_need_mutable_or_rng(built):
  assert built[3]["eval_no_mutable"].shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name, expected", [
    ("resnet18", 11_689_512),  # torchvision.models.resnet18().parameters()
    ("resnet50", 25_557_032),  # torchvision.models.resnet50().parameters()
    # Analytic: convs (no bias) + BN scale/bias + dense layers with bias.
    ("vgg_m", 7 * 7 * 3 * 96 + 5 * 5 * 96 * 256 + 9 * 256 * 512 + 2 * 9 * 512 * 512
     + 2 * (96 + 256 + 3 * 512) + (512 + 1) * 4096 + (4096 + 1) * 4096 + (4096 + 1) * 1000),
    ("vgg16", 138_357_544),  # torchvision.models.vgg16().parameters()
    ("small_cnn", 9 * (3 * 32 + 32 * 64 + 64 * 128 + 128 * 256) + 2 * (32 + 64 + 128 + 256)
     + (256 + 1) * 1000),
])
def test_param_counts_1000_classes(name, expected):
  variables = jax.eval_shape(lambda: _init(get_model(name, 1000), jnp.zeros((1, 224, 224, 3))))
  assert count_params(variables) == expected
  assert count_params(variables["params"]) == expected  # batch_stats are not parameters


def test_resnet_torchvision_names():
  shapes = _param_shapes(get_model("resnet50", 1000))
  params, stats = shapes["params"], shapes["batch_stats"]
  assert set(params) == {"conv1", "bn1", "head"} | {
      f"layer{s}_{b}" for s, n in enumerate((3, 4, 6, 3), start=1) for b in range(n)}
  assert params["conv1"]["kernel"] == (7, 7, 3, 64)
  assert set(params["layer1_0"]) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3",
                                     "downsample_conv", "downsample_bn"}
  assert "downsample_conv" not in params["layer1_1"]
  assert params["layer2_0"]["conv2"]["kernel"] == (3, 3, 128, 128)  # v1.5: stride on the 3x3
  assert params["layer4_2"]["bn3"]["scale"] == (2048,)
  assert set(stats["layer3_0"]["downsample_bn"]) == {"mean", "var"}

  basic = _param_shapes(get_model("resnet18", 1000))["params"]
  assert set(basic["layer1_0"]) == {"conv1", "bn1", "conv2", "bn2"}
  assert set(basic["layer2_0"]) == {"conv1", "bn1", "conv2", "bn2", "downsample_conv",
                                    "downsample_bn"}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_only_head_depends_on_num_classes(name):
  a = _param_shapes(get_model(name, 3))["params"]
  b = _param_shapes(get_model(name, 7))["params"]
  assert a.pop("head") != b.pop("head")
  assert a == b


@pytest.mark.parametrize("built, block_bn", [("resnet18", "bn2"), pytest.param("resnet50", "bn3", marks=pytest.mark.slow)],
                         indirect=["built"])
def test_zero_init_residual(built, block_bn):
  name, _, default, _ = built
  params = init_variables(get_model(name, NUM_CLASSES, zero_init_residual=True), jax.random.key(0), 32)["params"]
  blocks = [k for k in params if k.startswith("layer")]
  assert blocks and all(np.all(params[k][block_bn]["scale"] == 0) for k in blocks)
  assert all(np.all(params[k]["bn1"]["scale"] == 1) for k in blocks)
  assert np.all(default["params"]["layer1_0"][block_bn]["scale"] == 1)


@pytest.mark.parametrize("built", _models(BUILT), indirect=True)
def test_any_input_size_from_32(built):
  # Variables built at 32x32 apply unchanged to other sizes: global pooling, no fixed-size flatten.
  for out in built[3]["sizes"]:  # (33, 47) and (64, 64) px
    assert out.shape == (1, NUM_CLASSES) and np.all(np.isfinite(out))


@pytest.mark.parametrize("built", _models(EAGER), indirect=True)
def test_jit_matches_eager(built):
  _, model, variables, _ = built
  # Batch 4: train-mode BN over only 2 values per channel (1x1 maps in resnet18's layer4 at 32 px)
  # is ill-conditioned and amplifies harmless float reordering between jit and eager.
  x = _images(7, 4)
  for train in (False, True):
    fn = lambda v, x, train=train: model.apply(v, x, train=train, mutable=["batch_stats"], rngs=DROPOUT)
    eager_out, eager_stats = fn(variables, x)
    jit_out, jit_stats = jax.jit(fn)(variables, x)
    np.testing.assert_allclose(jit_out, eager_out, rtol=1e-4, atol=1e-4)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), jit_stats, eager_stats)


def test_vgg16_torchvision_names_and_any_input_size():
  shapes = _param_shapes(get_model("vgg16", 1000))["params"]
  convs = sorted(int(k.split("_")[1]) for k in shapes if k.startswith("features_"))
  assert convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # torchvision's features.N conv indices
  assert shapes["classifier_0"]["kernel"] == (512 * 7 * 7, 4096)
  assert shapes["head"]["kernel"] == (4096, 1000)
  # Adaptive 7x7 pooling: the same parameters work for 32 px (1x1 conv5 map) and 224 px (7x7) inputs.
  assert _param_shapes(get_model("vgg16", 1000), h=224)["params"] == shapes


def test_adaptive_avg_pool_matches_definition():
  x = jnp.arange(2 * 5 * 3 * 1, dtype=jnp.float32).reshape(2, 5, 3, 1)
  out = vgg.adaptive_avg_pool(x, 2)
  # torch bins for size 5 -> 2: [0, 3), [2, 5); size 3 -> 2: [0, 2), [1, 3).
  expected = np.stack([np.stack([np.asarray(x)[:, r0:r1, c0:c1].mean(axis=(1, 2)) for c0, c1 in ((0, 2), (1, 3))],
                                axis=1) for r0, r1 in ((0, 3), (2, 5))], axis=1)
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  np.testing.assert_array_equal(vgg.adaptive_avg_pool(x[:, :2, :2], 2), x[:, :2, :2])  # identity when sizes match


@pytest.mark.parametrize("name, options", [("small_cnn", {}), ("vgg_m", {"fc_width": 64})])  # narrow: eager
def test_dropout(name, options):
  x = _images(8, 2)
  model = get_model(name, NUM_CLASSES, **options)
  variables = _init(model, x)
  # Default rate 0: training needs no dropout rng.
  model.apply(variables, x, train=True, mutable=["batch_stats"])

  model = get_model(name, NUM_CLASSES, dropout_rate=0.5, **options)
  with pytest.raises(Exception, match="dropout"):
    model.apply(variables, x, train=True, mutable=["batch_stats"])
  run = lambda seed: model.apply(variables, x, train=True, mutable=["batch_stats"],
                                 rngs={"dropout": jax.random.key(seed)})[0]
  assert not np.allclose(run(1), run(2))
  np.testing.assert_array_equal(run(1), run(1))
  np.testing.assert_array_equal(model.apply(variables, x, train=False),
                                get_model(name, NUM_CLASSES, **options).apply(variables, x, train=False))


def test_bfloat16_compute_returns_float32_logits():
  model = get_model("small_cnn", NUM_CLASSES, dtype=jnp.bfloat16)
  x = _images(9, 2)
  variables = _init(model, x)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))
  out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert out.dtype == jnp.float32 and np.all(np.isfinite(out))
  ref = get_model("small_cnn", NUM_CLASSES).apply(variables, x, train=False)
  np.testing.assert_allclose(model.apply(variables, x, train=False), ref, rtol=0.1, atol=0.1)


def test_normalization_is_internal_and_fixed():
  mean_image = jnp.broadcast_to(jnp.asarray([0.485, 0.456, 0.406]), (1, 4, 4, 3))
  np.testing.assert_allclose(normalize_images(mean_image, jnp.float32), 0.0, atol=1e-6)
  ones = normalize_images(jnp.ones((1, 4, 4, 3)), jnp.float32)
  np.testing.assert_allclose(ones[0, 0, 0], [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224,
                                             (1 - 0.406) / 0.225], rtol=1e-6)
  model = get_model("small_cnn", NUM_CLASSES)
  with pytest.raises(ValueError, match="3 channels"):
    _init(model, jnp.zeros((1, 32, 32, 1)))


def test_get_model_errors():
  with pytest.raises(ValueError, match="no_such_net") as err:
    get_model("no_such_net", 10)
  for known in MODELS:
    assert known in str(err.value)
  with pytest.raises(TypeError, match=r"resnet18.*'widths'"):
    get_model("resnet18", 10, widths=(8, 16))
  with pytest.raises(TypeError, match=r"small_cnn.*'bogus'"):
    get_model("small_cnn", 10, bogus=1)
  with pytest.raises(TypeError, match="stage_sizes"):  # fixed by the registry entry
    get_model("resnet50", 10, stage_sizes=(1, 1, 1, 1))


def test_model_options_and_kwargs_are_applied():
  assert set(model_options("small_cnn")) == {"widths", "dropout_rate", "dtype"}
  assert set(model_options("resnet18")) == {"zero_init_residual", "dtype"}
  model = get_model("small_cnn", 4, widths=(8, 16))
  params = _param_shapes(model)["params"]
  assert set(params) == {"conv1", "bn1", "conv2", "bn2", "head"}
  assert params["head"]["kernel"] == (16, 4)
