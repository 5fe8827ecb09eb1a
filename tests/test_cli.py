"""The command line end to end, in subprocesses, as a user runs it."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, cli_env

TINY = {
    "dcgan_digits": ["--config.model.generator_features=(16,8,8)",
                     "--config.model.discriminator_features=(8,16)"],
    "vae_digits": ["--config.model.features=(8,16)"],
    "gan_ring2d": ["--config.model.hidden=(16,16)"],
    "cdcgan_digits": ["--config.model.generator_features=(16,8,8)",
                      "--config.model.discriminator_features=(8,16)"],
}


def run(args, num_devices=1, **kwargs):
  return subprocess.run([sys.executable, "-m", "gen.main", *args], cwd=ROOT, env=cli_env(num_devices),
                        capture_output=True, text=True, timeout=600, **kwargs)


def config_args(name, steps=6):
  return [f"--config=experiments/{name}.py", f"--config.num_steps={steps}", "--config.batch_size=16",
          "--config.log_every=2", "--config.sample_every=3", "--config.checkpoint_every=3",
          *TINY[name]]


# Each experiment's run also evaluates (periodically and with --mode=eval): what its groups
# report. dcgan_digits's train, sample, eval and report run in tests/test_readme.py.
EVALUATED = {
    "gan_ring2d": {"modes", "high_quality", "mode_kl"},
    "vae_digits": {"elbo", "nll_iwae", "bits_per_dim", "psnr", "ssim", "fd", "kid", "precision",
                   "recall", "density", "coverage", "classifier_score"},
}
EVAL_ARGS = {"gan_ring2d": [], "vae_digits": ["--config.eval.num_samples=500",
                                              "--config.eval.iwae_samples=8"]}


@pytest.mark.parametrize("name", sorted(EVALUATED))
def test_train_evaluate_then_sample(name, tmp_path):
  workdir = tmp_path / name
  result = run([*config_args(name), "--config.eval_every=3", *EVAL_ARGS[name],
                f"--workdir={workdir}"])
  assert result.returncode == 0, result.stderr[-3000:]

  assert json.loads((workdir / "config.json").read_text())["num_steps"] == 6
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if "images_per_sec" in r] == [2, 4, 6]
  for record in records:
    assert all(np.isfinite(v) for v in record.values()), record
  assert all(r["images_per_sec"] > 0 for r in records if "images_per_sec" in r)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  assert {"step_3.png", "step_6.png"} <= set(os.listdir(workdir / "samples"))
  if name == "vae_digits":
    assert {"reconstructions_step_3.png", "interpolations_step_3.png"} <= set(
        os.listdir(workdir / "samples"))
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))

  # Periodic evaluation at steps 3 and 6, logged, and the best checkpoint kept.
  expected = EVALUATED[name]
  for step in (3, 6):
    record = json.loads((workdir / "eval" / f"{step}.json").read_text())
    assert expected <= set(record) and all(math.isfinite(record[k]) for k in expected)
  assert any(f"eval/{sorted(expected)[0]}" in r for r in records)
  best = json.loads((workdir / "eval" / "best.json").read_text())
  assert best["step"] in (3, 6) and os.listdir(workdir / "checkpoints_best") == [str(best["step"])]
  # --mode=eval rewrites the latest step's evaluation.
  os.remove(workdir / "eval" / "6.json")
  result = run([*config_args(name), *EVAL_ARGS[name], f"--workdir={workdir}", "--mode=eval"])
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads((workdir / "eval" / "6.json").read_text())
  assert expected <= set(record) and record["step"] == 6

  outputs = []
  for i in range(2 if name == "gan_ring2d" else 1):  # Determinism: the sampler is shared.
    output = tmp_path / f"samples_{i}.npz"
    result = run([*config_args(name), f"--workdir={workdir}", "--mode=sample", "--num_samples=20",
                  f"--output={output}"])
    assert result.returncode == 0, result.stderr[-3000:]
    outputs.append(np.load(output)["samples"])
  samples = outputs[0]
  assert samples.dtype == np.float32 and len(samples) == 20 and np.all(np.isfinite(samples))
  if name == "gan_ring2d":
    assert samples.shape == (20, 2)
  else:
    assert samples.shape == (20, 8, 8, 1)
    assert samples.min() >= 0.0 and samples.max() <= 1.0
  if len(outputs) == 2:
    np.testing.assert_array_equal(outputs[0], outputs[1])  # Deterministic for a checkpoint, seed.


def test_conditional_sampling_by_label(tmp_path):
  result = run([*config_args("cdcgan_digits", steps=3), f"--workdir={tmp_path}"])
  assert result.returncode == 0, result.stderr[-3000:]
  output = tmp_path / "samples.npz"
  result = run([*config_args("cdcgan_digits", steps=3), f"--workdir={tmp_path}", "--mode=sample",
                "--num_samples=7", "--labels=0,1,2", f"--output={output}"])
  assert result.returncode == 0, result.stderr[-3000:]
  with np.load(output) as saved:
    np.testing.assert_array_equal(saved["labels"], [0, 1, 2, 0, 1, 2, 0])
    assert saved["samples"].shape == (7, 8, 8, 1)
  # A class the model does not have, and labels for an unconditional model, fail clearly.
  for args in [[*config_args("cdcgan_digits", steps=3), "--labels=3,12"],
               [*config_args("gan_ring2d", steps=3), "--labels=1"]]:
    result = run([*args, f"--workdir={tmp_path}", "--mode=sample", f"--output={tmp_path}/x.npz"])
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "Labels must be in [0, 10)" in result.stderr or "unconditional" in result.stderr
  assert not (tmp_path / "x.npz").exists()
