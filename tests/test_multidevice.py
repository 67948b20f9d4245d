"""Data parallelism: fused CQD train steps and the evaluation give the single-device result on 8 CPU devices
of one process and on 2 processes of 4 devices each (jax.distributed on 127.0.0.1, as on a pod slice).

One launch per configuration: the two multi-device runs are subprocesses of tests/helpers.py started together
(XLA_FLAGS forces the CPU device count at start-up), and the single-device reference runs in this process
meanwhile; each is 5 steps of method cqd on the same global batch of 32, and the 2-process run and the
reference also evaluate a fixed model on the tiny demo data set. All comparisons read those outputs.
"""

import numpy as np
import pytest

import helpers

pytestmark = pytest.mark.slow

STEPS = 5
BATCH = 32
# Multi-device runs: name -> (devices per process, processes, evaluate).
RUNS = {"8_devices": (8, 1, False), "2_processes_x_4_devices": (4, 2, True)}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """name -> the results of each process of that run (see helpers.train_few_steps and evaluate_tiny)."""
  tmp = tmp_path_factory.mktemp("multidevice")
  started = {}
  for name, (devices, processes, evaluate) in RUNS.items():
    out = str(tmp / f"{name}.npz")
    started[name] = out, helpers.start_steps(out, num_devices=devices, num_processes=processes, steps=STEPS,
                                             batch_size=BATCH, eval_workdir=str(tmp / name) if evaluate else None)
  try:
    one = helpers.train_few_steps("cqd", STEPS, BATCH)
    one.update(helpers.evaluate_tiny(str(tmp / "1_device")))
  finally:
    done = {name: helpers.finish_steps(out, procs) for name, (out, procs) in started.items()}
  return {"1_device": [one], **done}


@pytest.mark.parametrize("name", ["8_devices", "2_processes_x_4_devices"])
def test_data_parallel_steps_equal_single_device(results, name):
  """BatchNorm statistics and gradients must be over the global batch (true data parallelism); anything
  per-device or per-process (per-shard BN moments, un-averaged gradients, a process training on its rows
  only) would differ by far more than the tolerance, which only allows for a different floating-point
  reduction order of the sums over the batch: rtol 1e-5, atol 1e-6 (measured: under 3e-6 on the loss of
  about 15 and 2% of the tolerance elsewhere; at least 1000x below the parameter change of the steps,
  checked below).
  """
  one = results["1_device"][0]
  devices, processes, _ = RUNS[name]
  runs = results[name]
  assert len(runs) == processes
  keys = [k for k in one if k.startswith("variables")]
  for run in runs:  # every process holds the same replicated state
    assert int(run["device_count"]) == devices * processes and int(run["process_count"]) == processes
    assert int(run["batch_sharding_devices"]) == devices * processes
    assert int(run["global_batch"]) == BATCH  # each process's BATCH / processes rows, put together
    assert int(run["step"]) == int(one["step"]) == STEPS
    assert keys and sorted(keys) == sorted(k for k in run if k.startswith("variables"))
    for i in range(STEPS):
      np.testing.assert_allclose(run[f"loss_{i}"], one[f"loss_{i}"], rtol=1e-5, atol=1e-6)
    for k in keys:
      np.testing.assert_allclose(run[k], one[k], rtol=1e-5, atol=1e-6, err_msg=k)
  assert int(one["device_count"]) == 1 and int(one["global_batch"]) == BATCH
  # Not vacuous: the steps moved the parameters and BN statistics far more than the tolerance.
  init = helpers.flatten(helpers.init_variables(helpers.tiny_model(), seed=0))
  moved = max(float(np.max(np.abs(one[f"variables{k}"] - v))) for k, v in init.items())
  assert moved > 1e-3


def test_two_processes_evaluate_like_one(results):
  """Each process reads its rows of every test batch; put together they are the single-process batches
  (same labels, same padding mask: 40 examples in batches of 16, the last one's rows all on process 0),
  so the accuracies are the same numbers, exactly (per-example predictions on identical weights)."""
  one = results["1_device"][0]
  for run in results["2_processes_x_4_devices"]:
    assert run["eval_mask"].shape == (3, 16) and int(run["eval_mask"].sum()) == 40
    np.testing.assert_array_equal(run["eval_mask"], one["eval_mask"])
    np.testing.assert_array_equal(run["eval_labels"], one["eval_labels"])
    for key in ("eval_accuracy_a", "eval_accuracy_b"):
      assert float(run[key]) == float(one[key]), key
