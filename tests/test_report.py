"""The run report: plots and summary.md from a workdir's files, and --mode=report."""
import json
import math
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from test_cli import config_args, run

from gen import UsageError, report


def _write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _write_png(path, value):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((34, 34), value, np.uint8)).save(path)


def _assert_image(path):
  with Image.open(path) as image:
    image.verify()
  with Image.open(path) as image:
    assert image.width > 0 and image.height > 0


@pytest.fixture
def workdir(tmp_path):
  """A GAN run's files: three logged steps (one loss NaN), two evaluations, three grids."""
  _write_jsonl(tmp_path / "metrics.jsonl", [
      {"step": 10, "d_loss": 1.3, "g_loss": 0.7, "images_per_sec": 100.0,
       "gflops_per_sec": 1.0, "time": 1000.0},
      {"step": 20, "d_loss": 1.2, "g_loss": float("nan"), "images_per_sec": 350.0,
       "gflops_per_sec": 3.5, "time": 1010.0},
      {"step": 20, "eval/fd": 80.0, "time": 1012.0},
      {"step": 30, "d_loss": 1.1, "g_loss": 0.9, "images_per_sec": 230.0,
       "gflops_per_sec": 2.3, "time": 1125.0},
  ])
  (tmp_path / "eval").mkdir()
  for step, fd, precision in [(20, 80.0, 0.25), (30, 61.234567, 0.5)]:
    (tmp_path / "eval" / f"{step}.json").write_text(json.dumps(
        {"step": step, "fd": fd, "precision": precision, "eval_seconds": 3.0}))
  (tmp_path / "eval" / "best.json").write_text(json.dumps({"metric": "fd", "value": 61.2}))
  (tmp_path / "eval" / "reference_digits.npz").write_bytes(b"not an eval")
  for name, value in [("step_20.png", 50), ("step_30.png", 200),
                      ("reconstructions_step_40.png", 0)]:
    _write_png(tmp_path / "samples" / name, value)
  (tmp_path / "config.json").write_text(json.dumps(
      {"seed": 0, "batch_size": 64, "num_steps": 30, "model": {"name": "dcgan"},
       "dataset": {"name": "digits"}}))
  return tmp_path


def test_report_plots_and_summarises_a_run(workdir):
  paths = report.write_report(str(workdir))

  assert sorted(os.path.relpath(p, workdir) for p in paths) == [
      "report/losses.png", "report/metrics.png", "report/samples.png", "summary.md"]
  for name in ("losses", "metrics", "samples"):
    _assert_image(workdir / "report" / f"{name}.png")
  # The last unprefixed grid, not an earlier one nor a reconstruction.
  assert ((workdir / "report" / "samples.png").read_bytes()
          == (workdir / "samples" / "step_30.png").read_bytes())

  summary = (workdir / "summary.md").read_text()
  assert "Final step: 30 of 30" in summary
  assert "| fd | 61.23 |" in summary and "| precision | 0.5 |" in summary
  assert "eval_seconds" not in summary
  assert f"{np.median([100.0, 350.0, 230.0]):.1f} images/s" in summary  # 230.0
  assert f"{np.median([1.0, 3.5, 2.3]):.2f} GFLOP/s" in summary
  assert "2m 05s" in summary  # 1125 - 1000 seconds.
  assert "| g_loss | 0.9 |" in summary
  assert '"batch_size": 64' in summary
  for link in ("report/losses.png", "report/metrics.png", "report/samples.png"):
    assert f"({link})" in summary


def test_one_logged_step_without_evaluations_samples_or_config(tmp_path):
  _write_jsonl(tmp_path / "metrics.jsonl", [
      {"step": 1, "loss": 2.5, "kl": float("nan"), "images_per_sec": 40.0}])

  paths = report.write_report(str(tmp_path))

  assert sorted(os.path.relpath(p, tmp_path) for p in paths) == ["report/losses.png", "summary.md"]
  _assert_image(tmp_path / "report" / "losses.png")
  summary = (tmp_path / "summary.md").read_text()
  assert "Final step: 1" in summary and "40.0 images/s" in summary
  assert "Wall time: unknown" in summary
  assert "| loss | 2.5 |" in summary and "| kl |" not in summary  # Only NaN: nothing to show.


def test_curves_keep_finite_values_and_the_latest_of_a_repeated_step():
  records = [{"step": 1, "loss": 3.0, "images_per_sec": 9.0, "time": 5.0},
             {"step": 2, "loss": float("nan")},
             {"step": 3, "loss": 2.0, "eval/fd": 7.0},
             {"step": 2, "loss": 2.5}]  # Resumed from step 1's checkpoint: logged again.
  assert report.curves(records) == {"loss": ([1, 2, 3], [3.0, 2.5, 2.0])}
  assert report.loss_panel("d_loss") == report.loss_panel("g_loss") == "loss"
  assert report.loss_panel("d_real_logit") == report.loss_panel("d_fake_logit")


def test_evals_skip_timings_and_other_files(workdir):
  evals = report.read_evals(str(workdir))
  assert evals == {20: {"fd": 80.0, "precision": 0.25}, 30: {"fd": 61.234567, "precision": 0.5}}
  assert not any(math.isnan(v) for results in evals.values() for v in results.values())


def test_no_metrics_is_a_usage_error(tmp_path):
  with pytest.raises(UsageError, match="train first"):
    report.write_report(str(tmp_path))
  assert not (tmp_path / "summary.md").exists()


def test_training_writes_the_report_and_report_mode_rewrites_it(tmp_path):
  workdir = tmp_path / "run"
  args = [*config_args("dcgan_digits"), f"--workdir={workdir}"]
  result = run(args)
  assert result.returncode == 0, result.stderr[-3000:]
  written = {"summary.md", "report/losses.png", "report/samples.png"}
  assert all((workdir / name).exists() for name in written)
  assert "Final step: 6 of 6" in (workdir / "summary.md").read_text()

  shutil.rmtree(workdir / "report")
  os.remove(workdir / "summary.md")
  shutil.rmtree(workdir / "checkpoints")  # The report needs none.
  result = run([*args, "--mode=report"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == str(workdir / "summary.md")
  assert all((workdir / name).exists() for name in written)

  result = run([*config_args("dcgan_digits"), f"--workdir={tmp_path / 'empty'}", "--mode=report"])
  assert result.returncode != 0 and "train first" in result.stderr
  assert "Traceback" not in result.stderr
