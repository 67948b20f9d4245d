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
"label", "<stream>.logits" or "<stream>.features.<name>" (models/__init__.py lists each model's features).
An adapter (models.ADAPTERS) maps the first input to the second's shape; it trains with the student and is
dropped for evaluation and export.
"""

from __future__ import annotations

import dataclasses
import inspect
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
  image_size: int = 0  # input size in px; 0: config.image_size; trained streams only
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

  def features(self, stream: str) -> bool:
    """Whether a term reads a named feature of `stream` (it then runs with them)."""
    return any(i.startswith(f"{stream}.features.") for t in self.terms for i in t.inputs)


CE = Term("ce", ("student.logits", "label"), "ce")
KD = Term("kd", ("student.logits", "teacher.logits"), "distill", weight="weight", options="kd")
TEACHER_METHOD = "train_a"
TEACHER_ON_A = ("teacher", Stream("a", source=TEACHER_METHOD, cache="cache_teacher"))


def _student(view: str, source: str | None = None, model: str = "model") -> tuple[str, Stream]:
  return ("student", Stream(view, trained=True, source=source, model=model))


METHODS: dict[str, Method] = {
    "train_a": Method((_student("a", model="teacher_model"),), (CE,),
                      "train on A (the teacher f); tested on A and on B"),
    "train_b": Method((_student("b"),), (CE,), "train on B only"),
    "a_then_b": Method((_student("b", TEACHER_METHOD),), (CE,), "train on A, then fine-tune on B (the paper's A,B)"),
    "cqd": Method((_student("b"), TEACHER_ON_A), (CE, KD), "cross quality distillation from the A model"),
    "a_cqd": Method((_student("b", TEACHER_METHOD), TEACHER_ON_A), (CE, KD),
                    "CQD with the student initialised from the A model (A,CQD)"),
    "mixture_ab": Method((_student("ab"),), (CE,), "train on A and B together (the paper's A+B)"),
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
      if inp != "label" and (stream not in streams or not (output == "logits" or output.startswith("features."))):
        raise MethodError(f"config key {tkey}.inputs: unknown output {inp!r}; known: label, "
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


def model_key(s: Stream, config: Any) -> str:
  """The config section of a trained stream's model: "teacher_model" with an empty name means "model"."""
  section = config.get(s.model)
  if section is None:
    raise MethodError(f"config key {s.model}: missing (a stream's model section)")
  return s.model if section.get("name") else "model"


def image_size(s: Stream, config: Any) -> int:
  """A trained stream's input size in px."""
  return s.image_size or config.image_size


def resolve(method: Method, config: Any, known: Mapping[str, Method] | None = None) -> Method:
  """`method` with what the config says filled in: literal term weights and options, and each stream's
  model section, input size and cache flag (a frozen stream's from its source)."""
  known = all_methods(config) if known is None else known
  streams = []
  for name, s in method.streams:
    net = network(method, name, known)
    cache = bool(config.get(s.cache, False)) if isinstance(s.cache, str) else s.cache
    streams.append((name, dataclasses.replace(s, model=model_key(net, config), image_size=image_size(net, config),
                                              cache=cache)))
  terms = []
  for t in method.terms:
    options = dict(config[t.options]) if isinstance(t.options, str) else dict(t.options)
    weight = options.pop(t.weight) if isinstance(t.weight, str) else t.weight
    terms.append(dataclasses.replace(t, weight=float(weight), options=tuple(sorted(options.items()))))
  return dataclasses.replace(method, streams=tuple(streams), terms=tuple(terms))
