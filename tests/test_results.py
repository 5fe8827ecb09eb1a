"""The results command: runs collected by experiment, tag and seed, and the README's results
written from them (medians and ranges over seeds), with nothing else in the README touched."""
import json
import subprocess
import sys

from conftest import ROOT, cli_env, load_config
from gen import report, results


def _run(seed, evals, best=None, steps=10_000):
  return {"seed": seed, "num_steps": steps, "evals": evals, "best": best,
          "wall_seconds": 60.0 + seed,
          "commit": "abc1234", "cpu": "Some CPU (AVX2), 2 cores", "date": "2026-12-01",
          "overrides": []}


COLLECTED = {
    "gan_ring2d": {"": {str(s): _run(s, {"5000": {"modes": 8.0, "high_quality": hq - 5},
                                         "10000": {"modes": m, "high_quality": hq}},
                                     {"metric": "high_quality", "value": hq, "step": 10_000})
                        for s, (m, hq) in enumerate([(8.0, 90.0), (7.0, 60.0), (8.0, 95.5)])},
                   "sweep": {"0": _run(0, {"10000": {"modes": 1.0, "high_quality": 1.0}})}},
    "vae_digits": {"": {"0": _run(0, {"3000": {"nll_iwae": 23.28, "bits_per_dim": 0.524,
                                               "psnr": 16.9, "ssim": 0.858}}, steps=3000)}},
}


def test_headline_is_the_median_and_range_over_seeds():
  runs = list(COLLECTED["gan_ring2d"][""].values())
  text = results.headline("gan_ring2d", runs)
  assert text.startswith("8.0 (7.0-8.0) modes, 90.0 (60.0-95.5)% high quality"), text
  assert results.headline("gan_ring2d", runs, "5000").startswith(
      "8.0 (8.0-8.0) modes, 85.0 (55.0-90.5)%")
  single = results.headline("vae_digits", list(COLLECTED["vae_digits"][""].values()))
  assert single == "test NLL 23.28 nats (0.524 bits/dim); reconstruction PSNR 16.9 dB, SSIM 0.858"


def test_a_headline_is_made_of_the_summaries_of_the_experiments_eval_groups():
  translation = {"psnr": 25.84, "ssim": 0.9321, "label_preservation": 0.969,
                 "target_label_accuracy": 0.992}
  pix2pix = results.headline("pix2pix_edges2digits", [_run(0, {"3000": translation})])
  assert pix2pix == ("test SSIM 0.932, PSNR 25.8 dB, label preservation 96.9% "
                     "(ceiling 99.2%)"), pix2pix
  cycle = {**translation, **{f"inverse_{k}": v / 2 for k, v in translation.items()},
           "cycle_ssim": 0.934, "inverse_cycle_ssim": 0.908}
  cyclegan = results.headline("cyclegan_digits", [_run(s, {"1000": cycle}) for s in (0, 1)])
  assert cyclegan.startswith("A→B test SSIM 0.932 (0.932-0.932), PSNR 25.8 (25.8-25.8) dB, "), \
      cyclegan
  assert "; B→A test SSIM 0.466 (0.466-0.466), PSNR 12.9 (12.9-12.9) dB" in cyclegan
  assert cyclegan.endswith("; cycle SSIM 0.934 (0.934-0.934) (A→B→A) and 0.908 (0.908-0.908) "
                           "(B→A→B)")
  # A group whose metrics the runs lack (the classifier's here) adds nothing.
  codes = results.headline("infogan_digits", [_run(0, {"10000": {"code_accuracy": 0.844}})])
  assert codes == "categorical code accuracy after matching 84.4%", codes


def test_the_offline_experiments_are_those_whose_data_needs_no_download():
  offline = results.offline_experiments()
  assert {"dcgan_digits", "gan_ring2d", "vae_digits", "gpt_pydoc"} <= set(offline)
  assert not {"dcgan_mnist", "gpt_shakespeare_char", "gpt2_124m", "sngan_cifar10"} & set(offline)


def test_the_readme_is_rewritten_between_its_markers_and_in_the_measured_column(tmp_path):
  readme = tmp_path / "README.md"
  readme.write_text(
      "# title\n\n| command | data | measured |\n| --- | --- | --- |\n"
      "| `./launch.sh gan_ring2d` | ring | old numbers |\n"
      "| `./launch.sh dcgan_mnist` | mnist | not run here: needs a download |\n\n"
      f"before\n{results.BEGIN}\nstale table\n{results.END}\nafter\n")
  results.rewrite_readme(str(readme), COLLECTED, {"fd": 9.25, "precision": 0.90, "recall": 0.91,
                                                  "coverage": 1.0, "score": 9.78})
  text = readme.read_text()
  assert "stale table" not in text and text.startswith("# title") and text.endswith("after\n")
  assert "| `./launch.sh dcgan_mnist` | mnist | not run here: needs a download |" in text
  assert ("| `./launch.sh gan_ring2d` | ring | 8.0 (7.0-8.0) modes, 90.0 (60.0-95.5)% high "
          "quality (10,000 steps, 3 seeds) |") in text
  row = next(line for line in text.splitlines() if line.startswith("| `gan_ring2d` |"))
  assert "| 10,000 | 3 |" in row and "best high_quality 90.00 (60.00-95.50) (at step 10,000)" in row
  assert "VEEGAN 8 / 52.9%" in row and "1.0 min" in row  # Median of 60, 61 and 62 s.
  assert "commit abc1234" in text and "Some CPU (AVX2), 2 cores" in text
  assert "FD 9.2, precision 0.90, recall 0.91" in text
  assert "sweep" not in text  # A tagged sweep never reaches the README.


def test_a_run_is_trained_collected_and_not_trained_again(tmp_path):
  command = [sys.executable, "-m", "gen.results", "--experiments=gan_ring2d", "--seeds=2",
             "--tag=tiny", "--set=num_steps=4", "--set=eval_every=2", "--set=log_every=2",
             "--set=eval.num_samples=100", "--set=model.hidden=(16,16)", "--set=batch_size=16",
             f"--workdir={tmp_path / 'runs'}", f"--collected={tmp_path / 'results.json'}",
             "--readme="]
  first = subprocess.run(command, cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                         timeout=600)
  assert first.returncode == 0, first.stderr[-3000:]
  collected = json.loads((tmp_path / "results.json").read_text())
  runs = collected["gan_ring2d"]["tiny"]
  assert sorted(runs) == ["0", "1"] and sorted(runs["0"]["evals"]) == ["2", "4"]
  assert {"modes", "high_quality"} <= set(runs["1"]["evals"]["4"])
  losses = [[r["d_loss"] for r in report.read_metrics(str(tmp_path / "runs" / "gan_ring2d" / "tiny"
                                                         / f"seed_{seed}")) if "d_loss" in r]
            for seed in (0, 1)]
  assert losses[0] != losses[1]  # Two seeds, two runs.
  assert "gan_ring2d [tiny]:" in first.stdout
  again = subprocess.run(command, cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                         timeout=600)
  assert again.returncode == 0 and "Compiled the train step" not in again.stderr
  assert json.loads((tmp_path / "results.json").read_text()) == collected


def test_the_first_experiments_recorded_runs_meet_its_targets():
  """dcgan_digits's default runs in docs/results.json are of today's default length and meet
  the first experiment's targets against the floor computed here: each in at most 10 minutes,
  FD at most twice the floor's, precision and recall (at the floor's 1,438 samples) at least
  0.9 times its own. A default changed without `python -m gen.results
  --experiments=dcgan_digits` run again fails here."""
  runs = json.loads((ROOT / "docs" / "results.json").read_text())["dcgan_digits"][""]
  config = load_config("dcgan_digits")
  floor = results.digits_floor()
  assert len(runs) >= 3
  for seed, run in runs.items():
    assert run["num_steps"] == config.num_steps and not run["overrides"], seed
    assert run["wall_seconds"] <= 600, (seed, run["wall_seconds"])
    last = run["evals"][str(config.num_steps)]
    assert last["fd"] <= 2 * floor["fd"], (seed, last, floor)
    assert last["precision"] >= 0.9 * floor["precision"], (seed, last, floor)
    assert last["matched_recall"] >= 0.9 * floor["recall"], (seed, last, floor)
