"""The training methods, as data: the networks a train step runs (streams) and the weighted loss terms over
their outputs. `config.methods` names methods of the registry `METHODS` or of the config's own
`config.method_defs`; `all_methods` gives both, `resolve` fills in what comes from the config, and
train.train_step runs any of them.

A stream is a network reading one view of the paired batch ("a": the high-quality view, "b": the degraded
one, "ab": each example randomly one of the two) at its input size. Exactly one stream is trained; the
others are frozen (evaluation mode, no gradient). A stream with a `source` takes its weights from the
stage that trained method `source` on the same degradation: frozen at them, or (trained) starting from
them. A frozen stream is that stage's network, so its model and input size are the source's.

A term is weight * the batch mean of losses.TERMS[loss](*inputs, **options). Its inputs name outputs:
"label", "<stream>.logits", "<stream>.features.<name>" (models/__init__.py lists each model's features) or
"image.<view>" (the view at config.image_size, normalised as the models normalise their input). A feature
name may be "{key}", filled from the term's options; the feature "auto" is the deepest map of the stream
that stays at least MIN_MAP x MIN_MAP, "first" its shallowest (experiment.resolve picks them from the traced
shapes). An adapter (models.ADAPTERS) maps the first input to the second's shape; it trains with the
student and is dropped for evaluation and export. A term whose weight is 0 is dropped, and with it any
frozen stream no term reads (`active`), so the parts of a method can be switched off by config.

Options and weights may come from config sections (`Term.options` names one, dotted: "pd.kd"); a section
the config lacks, or a key it lacks, takes its value from DEFAULTS, so every built-in method runs on any
config.
"""

from __future__ import annotations

import dataclasses
import inspect
import string
from typing import Any, Mapping

from cqd_jax.config_lib import ConfigError

VIEWS = ("a", "b", "ab")
Options = tuple[tuple[str, Any], ...]


@dataclasses.dataclass(frozen=True)
class Stream:
  """A network the train step runs on one view of the batch."""

  view: str  # one of VIEWS
  trained: bool = False  # the network being trained (exactly one per method), else frozen
  source: str | None = None  # the method whose trained network this stream is (frozen) or starts from
  model: str = "model"  # the config section of the model (name, options, init_from); trained streams only
  image_size: int = 0  # input size in px; 0: scale * config.image_size; trained streams only
  scale: float | str = 1.0  # the input size relative to config.image_size (or the config key holding it)
  cache: bool | str = False  # frozen: read logits from a table computed once (or the config key saying so)


@dataclasses.dataclass(frozen=True)
class Term:
  """weight * mean over the batch of losses.TERMS[loss](*inputs, **options)."""

  loss: str
  inputs: tuple[str, ...]
  metric: str  # the term's name in the step's metrics
  weight: float | str = 1.0  # a number, or the key of the `options` section that holds it
  options: Options | str = ()  # (key, value) pairs, or the config section holding them (and the weight)
  adapter: str | None = None  # models.ADAPTERS name: maps inputs[0] to the shape of inputs[1]


@dataclasses.dataclass(frozen=True)
class Method:
  """One way of training a model: its streams (name, stream) and its loss terms. Hashable, so it can key a
  cache and be a static argument."""

  streams: tuple[tuple[str, Stream], ...]
  terms: tuple[Term, ...]
  description: str = ""
  image_size: int = 0  # the size of the "image.<view>" inputs: config.image_size (filled in by resolve)

  @property
  def student(self) -> str:
    """The name of the trained stream."""
    return next(name for name, s in self.streams if s.trained)

  @property
  def frozen(self) -> tuple[str, ...]:
    return tuple(name for name, s in self.streams if not s.trained)

  def stream(self, name: str) -> Stream:
    return dict(self.streams)[name]

  @property
  def sources(self) -> tuple[str, ...]:
    """The methods this one takes weights from, in stream order."""
    return tuple(dict.fromkeys(s.source for _, s in self.streams if s.source))

  @property
  def images(self) -> tuple[str, ...]:
    """The views whose images ("image.<view>") a term reads."""
    return tuple(sorted({i.partition(".")[2] for t in self.terms for i in t.inputs if i.startswith("image.")}))

  def features(self, stream: str) -> bool:
    """Whether a term reads a named feature of `stream` (it then runs with them)."""
    return any(i.startswith(f"{stream}.features.") for t in self.terms for i in t.inputs)


CE = Term("ce", ("student.logits", "label"), "ce")
KD = Term("kd", ("student.logits", "teacher.logits"), "distill", weight="weight", options="kd")
TEACHER_METHOD = "train_a"
TEACHER_ON_A = ("teacher", Stream("a", source=TEACHER_METHOD, cache="cache_teacher"))
ASSISTANT_METHOD = "pd_assistant"
ASSISTANT_ON_A = ("assistant", Stream("a", source=ASSISTANT_METHOD))
# The smallest feature map ("auto" features) a feature term reads: Pixel Distillation's FSR stage.
MIN_MAP = 5

# Config sections the built-in methods read, with their defaults (a config may hold any part of them).
DEFAULTS: dict[str, dict[str, Any]] = {
    # The native low-resolution students (train_b_low, kd, pixel_distillation*, horkd) read view B at
    # scale * config.image_size px, without upsampling back (Pixel Distillation's 224 -> 56 px).
    "low_res": dict(scale=0.25),
    # Pixel Distillation (Guo et al., arXiv 2112.09532), teacher -> assistant -> student: the authors' loss
    # (1 - alpha) CE + alpha T^2 KL with alpha = 0.9 and T = 4 (soft CE and KL differ by a constant), in both
    # stages; the FSR term (our default weight 1, L2) matches the assistant's map at `feature`.
    "pd": dict(ce=dict(weight=0.1), kd=dict(weight=0.9, loss="soft_ce", temperature=4.0, t2_scale=True),
               fsr=dict(weight=1.0, norm="l2", feature="auto")),
    # Their one-stage code: no assistant; KD from the teacher (pd.ce, pd.kd) and the student's stem ("first":
    # its shallowest map) decoded into the high-resolution input, L1 to the normalised image, weight 50 for
    # ratio 4 (10 for ratio 2).
    "pd_isr": dict(weight=50.0, norm="l1", feature="first"),
    # HORKD (Ge et al., AAAI 2020) as we read its abstract (configs/cub_lowres_horkd.py): zero order = KD on
    # logits, first order = RKD distances, second order = RKD angles of `feature`, each with the teacher and
    # with the assistant; RKD's weights 25 (distance) and 50 (angle) split between the two streams.
    "horkd": dict(ce=dict(weight=0.1),
                  kd_teacher=dict(weight=0.45, loss="soft_ce", temperature=4.0, t2_scale=True),
                  kd_assistant=dict(weight=0.45, loss="soft_ce", temperature=4.0, t2_scale=True),
                  distance_teacher=dict(weight=12.5, feature="pre_logits"),
                  distance_assistant=dict(weight=12.5, feature="pre_logits"),
                  angle_teacher=dict(weight=25.0, feature="pre_logits"),
                  angle_assistant=dict(weight=25.0, feature="pre_logits")),
}


def _student(view: str, source: str | None = None, model: str = "model") -> tuple[str, Stream]:
  return ("student", Stream(view, trained=True, source=source, model=model))


# The native low-resolution student: the small network (config.small_model, else config.model) on view B.
LOW_RES_STUDENT = ("student", Stream("b", trained=True, model="small_model", scale="low_res.scale"))


def _kd(section: str, target: str = "teacher", metric: str = "distill") -> Term:
  return Term("kd", ("student.logits", f"{target}.logits"), metric, weight="weight", options=section)


def _relation(order: str, target: str) -> Term:
  loss = {"distance": "rkd_distance", "angle": "rkd_angle"}[order]
  return Term(loss, ("student.features.{feature}", f"{target}.features.{{feature}}"), f"{order}_{target}",
              weight="weight", options=f"horkd.{order}_{target}")


def _ce(section: str) -> Term:
  return Term("ce", ("student.logits", "label"), "ce", weight="weight", options=section)


PD_CE = _ce("pd.ce")
METHODS: dict[str, Method] = {
    "train_a": Method((_student("a", model="teacher_model"),), (CE,),
                      "train on A (the teacher f); tested on A and on B"),
    "train_b": Method((_student("b"),), (CE,), "train on B only"),
    "a_then_b": Method((_student("b", TEACHER_METHOD),), (CE,), "train on A, then fine-tune on B (the paper's A,B)"),
    "cqd": Method((_student("b"), TEACHER_ON_A), (CE, KD), "cross quality distillation from the A model"),
    "a_cqd": Method((_student("b", TEACHER_METHOD), TEACHER_ON_A), (CE, KD),
                    "CQD with the student initialised from the A model (A,CQD)"),
    "mixture_ab": Method((_student("ab"),), (CE,), "train on A and B together (the paper's A+B)"),
    # Model compression with CQD (the paper's Table 2): the small network (config.small_model) on A, on B, and
    # on B distilled from the small A model or from train_a's (deep) one.
    "train_a_small": Method((_student("a", model="small_model"),), (CE,), "the small network on A"),
    "train_b_small": Method((_student("b", model="small_model"),), (CE,), "the small network on B"),
    "cqd_small": Method((_student("b", model="small_model"), ("teacher", Stream("a", source="train_a_small",
                                                                                cache="cache_teacher"))),
                        (CE, KD), "CQD between small networks (teacher: train_a_small)"),
    "cqd_to_small": Method((_student("b", model="small_model"), TEACHER_ON_A), (CE, KD),
                           "CQD and compression: the small network on B from train_a's network on A"),
    "train_b_low": Method((LOW_RES_STUDENT,), (CE,), "the small network on B at its low resolution, labels only"),
    "kd": Method((LOW_RES_STUDENT, TEACHER_ON_A), (CE, KD), "the low-resolution student, KD from the A model"),
    ASSISTANT_METHOD: Method(
        (_student("a", model="small_model"), TEACHER_ON_A), (PD_CE, _kd("pd.kd")),
        "Pixel Distillation stage 1: the small network on A, KD from the teacher (the assistant)"),
    "pixel_distillation": Method(
        (LOW_RES_STUDENT, ASSISTANT_ON_A),
        (PD_CE, _kd("pd.kd", "assistant"),
         Term("feature_distance", ("student.features.{feature}", "assistant.features.{feature}"), "fsr",
              weight="weight", options="pd.fsr", adapter="pixel_shuffle")),
        "Pixel Distillation stage 2: the low-resolution student, KD and feature super-resolution from the assistant"),
    "pixel_distillation_isr": Method(
        (LOW_RES_STUDENT, TEACHER_ON_A),
        (PD_CE, _kd("pd.kd"),
         Term("feature_distance", ("student.features.{feature}", "image.a"), "isr", weight="weight",
              options="pd_isr", adapter="image_decoder")),
        "Pixel Distillation, one stage: KD from the teacher and the stem decoded into the high-resolution image"),
    "horkd": Method(
        (LOW_RES_STUDENT, ("teacher", Stream("a", source=TEACHER_METHOD)), ASSISTANT_ON_A),
        (_ce("horkd.ce"), _kd("horkd.kd_teacher", "teacher", "kd_teacher"),
         _kd("horkd.kd_assistant", "assistant", "kd_assistant"),
         _relation("distance", "teacher"), _relation("distance", "assistant"),
         _relation("angle", "teacher"), _relation("angle", "assistant")),
        "hybrid-order relational KD from the teacher and the assistant (our reading of HORKD's abstract)"),
}

# Config keys of the engine before methods were streams and terms, and what replaced them.
REPLACED_KEYS = {
    "distill": "config.kd (loss, temperature, weight, t2_scale: the options of the KD term) and "
               "config.cache_teacher",
}


class MethodError(ConfigError):
  """A method definition is wrong; the message names the config key."""


def _parse(name: str, spec: Mapping[str, Any]) -> Method:
  """A Method from its config form: {streams: {name: {view, trained, source, ...}}, terms: ({loss, inputs,
  weight, adapter, <options>}, ...), description}."""
  key = f"method_defs.{name}"
  unknown = set(spec) - {"streams", "terms", "description"}
  if unknown:
    raise MethodError(f"config key {key}: unknown field {sorted(unknown)[0]!r}; known: streams, terms, description")
  stream_fields = {f.name for f in dataclasses.fields(Stream)}
  streams = []
  for sname, s in dict(spec.get("streams", {})).items():
    bad = set(s) - stream_fields
    if bad:
      raise MethodError(f"config key {key}.streams.{sname}: unknown field {sorted(bad)[0]!r}; known: "
                        f"{', '.join(sorted(stream_fields))}")
    streams.append((sname, Stream(**dict(s))))
  terms = []
  for i, t in enumerate(spec.get("terms", ())):
    t = dict(t)
    if "loss" not in t or "inputs" not in t:
      raise MethodError(f"config key {key}.terms[{i}]: needs 'loss' and 'inputs'")
    loss, inputs = t.pop("loss"), tuple(t.pop("inputs"))
    metric = t.pop("metric", f"{loss}_{i}" if any(u["loss"] == loss for u in spec["terms"][:i]) else loss)
    weight, adapter = t.pop("weight", 1.0), t.pop("adapter", None)
    terms.append(Term(loss, inputs, metric, weight, tuple(sorted(t.items())), adapter))
  return Method(tuple(streams), tuple(terms), spec.get("description", ""))


def all_methods(config: Any = None) -> dict[str, Method]:
  """The registry plus the config's `method_defs` (which may not reuse a registry name)."""
  out = dict(METHODS)
  defs = config.get("method_defs", {}) if config is not None else {}
  for name, spec in dict(defs).items():
    if name in METHODS:
      raise MethodError(f"config key method_defs.{name}: {name!r} is a built-in method; choose another name")
    out[name] = _parse(name, spec)
  return out


def get_method(name: str, config: Any = None) -> Method:
  """Looks up a method by the name used in `config.methods`, checking its streams and terms."""
  known = all_methods(config)
  if name not in known:
    raise MethodError(f"config key methods: unknown method {name!r}; known: {', '.join(known)}")
  check(name, known)
  return known[name]


def definition_key(name: str) -> str:
  """Where method `name` is defined, as an error message names it (METHODS['cqd'], method_defs.<name>)."""
  return f"METHODS[{name!r}]" if name in METHODS else f"method_defs.{name}"


def check(name: str, known: Mapping[str, Method]) -> None:
  """MethodError naming the config key unless `name`'s streams, sources and term names are well formed."""
  from cqd_jax import losses  # pylint: disable=g-import-not-at-top (JAX-heavy)
  from cqd_jax.models import ADAPTERS  # pylint: disable=g-import-not-at-top

  method, key = known[name], definition_key(name)
  if sum(s.trained for _, s in method.streams) != 1:
    raise MethodError(f"config key {key}.streams: exactly one stream must have trained=True")
  for sname, s in method.streams:
    if s.view not in VIEWS:
      raise MethodError(f"config key {key}.streams.{sname}.view={s.view!r}: known views: {', '.join(VIEWS)}")
    if s.source is not None and s.source not in known:
      raise MethodError(f"config key {key}.streams.{sname}.source={s.source!r}: unknown method; known: "
                        f"{', '.join(known)}")
    if not s.trained and s.source is None:
      raise MethodError(f"config key {key}.streams.{sname}: a frozen stream needs a source (the method that "
                        "trains it)")
  _check_acyclic(name, known, ())
  streams = dict(method.streams)
  for i, t in enumerate(method.terms):
    tkey = f"{key}.terms[{i}]"
    if t.loss not in losses.TERMS:
      raise MethodError(f"config key {tkey}.loss={t.loss!r}: unknown loss; known: {', '.join(losses.TERMS)}")
    if t.adapter is not None and t.adapter not in ADAPTERS:
      raise MethodError(f"config key {tkey}.adapter={t.adapter!r}: unknown adapter; known: {', '.join(ADAPTERS)}")
    for inp in t.inputs:
      stream, _, output = inp.partition(".")
      image = stream == "image" and output in ("a", "b")
      if inp != "label" and not image and (stream not in streams
                                           or not (output == "logits" or output.startswith("features."))):
        raise MethodError(f"config key {tkey}.inputs: unknown output {inp!r}; known: label, image.a, image.b, "
                          + ", ".join(f"{s}.logits, {s}.features.<name>" for s in streams))
  metrics = [t.metric for t in method.terms]
  if len(set(metrics)) != len(metrics):
    raise MethodError(f"config key {key}.terms: two terms have the same metric name ({', '.join(metrics)})")


def check_options(name: str, method: Method, resolved: Method) -> None:
  """MethodError unless every option of the terms of `resolved` (`method` with the config filled in) is a
  keyword its loss takes; the error names the config section the options came from, if any."""
  from cqd_jax import losses  # pylint: disable=g-import-not-at-top (JAX-heavy)

  for i, (term, t) in enumerate(zip(method.terms, resolved.terms)):
    params = inspect.signature(losses.TERMS[t.loss]).parameters
    takes = [p.name for p in params.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = [k for k, _ in t.options if k not in takes]
    where = term.options if isinstance(term.options, str) else f"{definition_key(name)}.terms[{i}]"
    if unknown:
      raise MethodError(f"config key {where}: loss {t.loss!r} has no option "
                        f"{unknown[0]!r}; its options: {', '.join(takes) or 'none'} (and weight, adapter, metric)")


def _check_acyclic(name: str, known: Mapping[str, Method], path: tuple[str, ...]) -> None:
  if name in path:
    raise MethodError(f"config key {definition_key(path[0])}: the methods' sources form a cycle: "
                      + " -> ".join((*path, name)))
  for source in known[name].sources:
    _check_acyclic(source, known, (*path, name))


def trained_stream(name: str, known: Mapping[str, Method]) -> Stream:
  """The stream method `name` trains."""
  method = known[name]
  return method.stream(method.student)


def network(method: Method, stream: str, known: Mapping[str, Method]) -> Stream:
  """The trained stream whose network `stream` of `method` is: itself if trained, else its source's."""
  s = method.stream(stream)
  return s if s.trained else trained_stream(s.source, known)


def setting(config: Any, key: str) -> Any:
  """The value of dotted config key `key`, else its default from DEFAULTS; a section (dict) merges both,
  key by key. MethodError naming the key if neither has it."""
  found, default = _lookup(config, key), _lookup(DEFAULTS, key)
  if found is None and default is None:
    raise MethodError(f"config key {key}: missing (and no default in methods.DEFAULTS)")
  if isinstance(default, Mapping) or (found is not None and hasattr(found, "items")):
    merged = dict(_plain(default) or {})
    merged.update(_plain(found) or {})
    return merged
  return default if found is None else found


def _lookup(tree: Any, key: str) -> Any:
  for part in key.split("."):
    if tree is None or not hasattr(tree, "get"):
      return None
    tree = tree.get(part)
  return tree


def _plain(section: Any) -> dict[str, Any] | None:
  return None if section is None else (section.to_dict() if hasattr(section, "to_dict") else dict(section))


def model_key(s: Stream, config: Any) -> str:
  """The config section of a trained stream's model; "teacher_model" and "small_model" fall back to
  "model" when the config lacks them or leaves their name empty."""
  section = config.get(s.model)
  if section is None and s.model not in ("teacher_model", "small_model"):
    raise MethodError(f"config key {s.model}: missing (a stream's model section)")
  return s.model if section is not None and section.get("name") else "model"


def image_size(s: Stream, config: Any) -> int:
  """A trained stream's input size in px: its own, else its scale of config.image_size."""
  if s.image_size:
    return s.image_size
  scale = setting(config, s.scale) if isinstance(s.scale, str) else s.scale
  size = round(float(scale) * config.image_size)
  if not 0 < scale <= 8 or size < 4:
    where = f"config key {s.scale}" if isinstance(s.scale, str) else "a stream's scale"
    raise MethodError(f"{where}={scale!r}: gives an input of {size} px from image_size {config.image_size} "
                      "(needs at least 4 px, scale in (0, 8])")
  return size


def resolve(method: Method, config: Any, known: Mapping[str, Method] | None = None) -> Method:
  """`method` with what the config says filled in: literal term weights, options and feature names, and each
  stream's model section, input size and cache flag (a frozen stream's from its source)."""
  known = all_methods(config) if known is None else known
  streams = []
  for name, s in method.streams:
    net = network(method, name, known)
    cache = bool(config.get(s.cache, False)) if isinstance(s.cache, str) else s.cache
    streams.append((name, dataclasses.replace(s, model=model_key(net, config), image_size=image_size(net, config),
                                              scale=1.0, cache=cache)))
  terms = []
  for t in method.terms:
    options = _options(t, config)
    weight = _weight_in(t, options)
    if isinstance(t.weight, str):
      options.pop(t.weight)
    fields = {f for i in t.inputs for _, f, _, _ in string.Formatter().parse(i) if f}
    missing = sorted(fields - set(options))
    if missing:
      raise MethodError(f"config key {t.options}: no {missing[0]!r} for the inputs {', '.join(t.inputs)}")
    inputs = tuple(i.format_map(options) for i in t.inputs)
    options = {k: v for k, v in options.items() if k not in fields}
    terms.append(dataclasses.replace(t, inputs=inputs, weight=float(weight), options=tuple(sorted(options.items()))))
  return dataclasses.replace(method, streams=tuple(streams), terms=tuple(terms), image_size=config.image_size)


def active(method: Method, config: Any) -> Method:
  """`method` without the terms whose weight (in `config`) is 0 and the frozen streams no other term reads:
  the parts of a method a config switches off."""
  terms = tuple(t for t in method.terms if _weight_in(t, _options(t, config)) != 0)
  read = {i.partition(".")[0] for t in terms for i in t.inputs}
  streams = tuple((n, s) for n, s in method.streams if s.trained or n in read)
  return dataclasses.replace(method, streams=streams, terms=terms)


def _options(t: Term, config: Any) -> dict[str, Any]:
  """A term's options (and weight key): its literal pairs, or its config section over DEFAULTS."""
  return setting(config, t.options) if isinstance(t.options, str) else dict(t.options)


def _weight_in(t: Term, options: Mapping[str, Any]) -> float:
  """A term's weight: its literal number, or its key in `options` (_options)."""
  if not isinstance(t.weight, str):
    return t.weight
  if t.weight not in options:
    raise MethodError(f"config key {t.options}: no {t.weight!r} (the weight of term {t.metric!r})")
  return float(options[t.weight])


def pick_features(method: Method, shapes: Mapping[str, tuple[int, ...]]) -> Method:
  """`method` with each "<stream>.features.auto" input replaced by the deepest feature map of the term's
  first stream that is at least MIN_MAP x MIN_MAP, and each ".features.first" by its shallowest map (the
  stem where a model has one); `shapes`: experiment.output_shapes."""
  terms = []
  for t in method.terms:
    picks = [p for p in ("auto", "first") if any(x.endswith(f".features.{p}") for x in t.inputs)]
    if not picks:
      terms.append(t)
      continue
    stream = t.inputs[0].partition(".")[0]
    inputs = t.inputs
    for pick in picks:
      low = MIN_MAP if pick == "auto" else 1
      maps = {k.rpartition(".")[2]: min(v[1:3]) for k, v in shapes.items()
              if k.startswith(f"{stream}.features.") and len(v) == 4 and min(v[1:3]) >= low}
      if not maps:
        raise MethodError(f"term {t.metric!r}: stream {stream!r} has no feature map of at least {low}x{low} "
                          f"for the {pick!r} feature; name one in the term's options (feature=...)")
      depth = lambda name: int(name[5:]) if name[5:].isdigit() else -1  # stem -1, stageN n
      if pick == "auto":  # the smallest map; of equal ones the deepest
        best = min(maps, key=lambda name: (maps[name], -depth(name)))
      else:  # the largest map; of equal ones the shallowest
        best = min(maps, key=lambda name: (-maps[name], depth(name)))
      inputs = tuple(x.replace(f".features.{pick}", f".features.{best}") for x in inputs)
    terms.append(dataclasses.replace(t, inputs=inputs))
  return dataclasses.replace(method, terms=tuple(terms))
