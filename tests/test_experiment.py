"""Stage planning and the results table, without training."""

import os

import ml_collections

from cqd_jax import experiment
from cqd_jax import results


def _config(degradations, methods):
  c = ml_collections.ConfigDict()
  c.degradations = degradations
  c.methods = methods
  c.kd = dict(loss="soft_ce", temperature=10.0, weight=50.0, t2_scale=False)  # cqd's weight decides its streams
  return c


def test_plan_trains_one_teacher_per_view_a_first_and_reuses_it():
  config = _config({"lowres": {"a": "crop", "b": "crop+lowres"}, "localize": {"a": "crop", "b": "full"},
                    "cars": {"a": "full", "b": "full+lowres"}},
                   ("train_a", "train_b", "cqd"))
  stages = experiment.plan(config)
  names = [s.name for s in stages]
  # ConfigDict iterates keys in sorted order: cars, localize, lowres.
  assert names[:2] == ["train_a@full", "train_a@crop"]
  assert names[2:] == ["cars/train_b", "cars/cqd", "localize/train_b", "localize/cqd", "lowres/train_b",
                       "lowres/cqd"]
  by_name = {s.name: s for s in stages}
  assert by_name["localize/cqd"].sources == (("train_a", "train_a@crop"),)
  assert by_name["localize/cqd"].view_b == "full"
  assert by_name["cars/cqd"].source("train_a") == "train_a@full"
  assert by_name["train_a@crop"].sources == () and by_name["train_a@crop"].shared


def test_results_table_rows_and_files(tmp_path):
  """The accuracy table, and a table of the models' sizes (a row written before sizes were recorded, like t
  here, has none)."""
  rows = [
      {"degradation": "lowres", "method": "train_a", "stage": "t", "accuracy_a": 0.9, "accuracy_b": 0.2},
      {"degradation": "lowres", "method": "cqd", "stage": "c", "accuracy_a": 0.3, "accuracy_b": 0.55,
       "best_step": 4, "best_val_accuracy": 0.5, "skipped_updates": 0, "params": 11689512,
       "flops_per_image": 3373826816.0},
  ]
  md = results.write_tables(rows, ["lowres", "edges"], ["train_a", "cqd"], str(tmp_path))
  lines = md.splitlines()
  assert lines[0] == "| method | test | lowres | edges |"
  assert lines[2] == "| train_a | A | 90.0 | - |"
  assert lines[3] == "| train_a | B | 20.0 | - |"
  assert lines[4] == "| cqd | B | 55.0 | - |"
  assert lines[-3:] == ["| stage | method | parameters | FLOPs / image |", "|---|---|---|---|",
                        "| c | cqd | 11.7 M | 3.37 G |"]
  assert (tmp_path / "results.md").read_text() == md
  csv_lines = (tmp_path / "results.csv").read_text().splitlines()
  assert csv_lines[0] == ("degradation,method,stage,accuracy_a,accuracy_b,steps_trained,max_steps,best_step,"
                          "best_val_accuracy,skipped_updates,params,flops_per_image,model,input_px")
  assert len(csv_lines) == 3
  assert csv_lines[1] == "lowres,train_a,t,0.9,0.2,,,,,,,,," and csv_lines[2] == ("lowres,cqd,c,0.3,0.55,,,4,0.5,0,"
                                                                                   "11689512,3373826816.0,,")
  assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]
