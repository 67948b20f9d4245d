"""Shared pytest setup: compilation settings, the skip policy, and the tiny run that many tests read.

- absl flags are marked parsed, so library code that reads them works under pytest.
- Every XLA program of the run goes to a persistent compilation cache in a temporary directory of this run
  (never a user's cache), shared with the subprocesses the tests start: a program compiled once (the tiny
  train step of the command-line runs, say) is read back instead of compiled again.
- Most tests check what is computed, not how XLA rounds it, so XLA's optimisations are off
  (`jax_disable_most_optimizations`, which about halves compile times here); modules whose subject is the
  compiled numbers themselves (our convolution and pooling against XLA's, the train step against numpy, the
  views against PIL) set `XLA_OPTIMIZED = True` and get XLA's default.
- A test may skip only for a reason in `helpers.ALLOWED_SKIPS` (torch absent, ../shared/data absent, a check
  that root cannot make); any other skip fails, so a CI run cannot silently stop checking something.
"""

import os
import shutil
import tempfile

# One directory for the whole run: pytest-xdist workers inherit it from the process that made (and removes) it.
_OWN_CACHE = "CQD_JAX_TESTS_XLA_CACHE" not in os.environ
if _OWN_CACHE:
  os.environ["CQD_JAX_TESTS_XLA_CACHE"] = tempfile.mkdtemp(prefix="cqd-jax-tests-xla-cache-")
_CACHE_DIR = os.environ["CQD_JAX_TESTS_XLA_CACHE"]
os.environ.update({  # before JAX is imported; subprocesses inherit them
    "JAX_COMPILATION_CACHE_DIR": _CACHE_DIR,
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
})

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

import helpers  # pylint: disable=g-import-not-at-top,wrong-import-position

flags.FLAGS.mark_as_parsed()


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE:
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def xla_optimization(request):
  """XLA's optimisations for modules with XLA_OPTIMIZED = True (numerical comparisons), off elsewhere."""
  optimized = getattr(request.module, "XLA_OPTIMIZED", False)
  jax.config.update("jax_disable_most_optimizations", not optimized)
  yield optimized
  jax.config.update("jax_disable_most_optimizations", True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  """Turns a skip whose reason is not in helpers.ALLOWED_SKIPS into a failure."""
  del item, call
  report = (yield).get_result()
  if report.skipped and not hasattr(report, "wasxfail") and isinstance(report.longrepr, tuple):
    reason = report.longrepr[2].removeprefix("Skipped: ")
    if not reason.startswith(helpers.ALLOWED_SKIPS):
      report.outcome = "failed"
      report.longrepr = (f"skipped for a reason that is not allowed ({reason}); a test may skip only when "
                         f"{'; '.join(helpers.ALLOWED_SKIPS)}")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> helpers.TinyRun:
  """configs/demo.py shrunk to seconds (helpers.CLI_TINY_ARGS: train_a, train_b and cqd, 4 steps each), run
  to the end once through the command line's own entry point, in this process. Tests that change the
  workdir work on a copy (helpers.copy_run)."""
  return helpers.finished_tiny_run(tmp_path_factory.mktemp("tiny_run") / "work")
