"""The benchmark harness reports every number the issue names, and they are sane."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT, cli_env

KEYS = ("images_per_sec", "step_ms", "compile_s", "compile_cached_s", "flops_per_step", "mfu",
        "input_images_per_sec", "sample_images_per_sec")


@pytest.mark.parametrize("name", ["dcgan_digits", "vae_digits"])
def test_bench_prints_one_json_object_with_the_numbers(name):
  result = subprocess.run(
      [sys.executable, "-m", "gen.bench", name, "--steps=3", "--warmup=1", "--json",
       "--batch_size=16"], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  for key in KEYS:
    assert report[key] > 0, key
  assert report["experiment_batch_size"] == 16
  assert report["images_per_sec"] == pytest.approx(16 / (report["step_ms"] / 1e3))
  assert 0 < report["mfu"] < 1.5  # A measured peak can be beaten a little by a lucky step.
  # FLOPs from XLA's cost analysis: at least the generator's forward pass of 16 samples.
  assert report["flops_per_step"] > 16 * 1e5
  assert report["input_source"] == "dataset"


def test_bench_rejects_an_unknown_experiment():
  result = subprocess.run([sys.executable, "-m", "gen.bench", "dcgan_digitz"], cwd=ROOT,
                          env=cli_env(), capture_output=True, text=True, timeout=60)
  assert result.returncode != 0 and "unknown experiment 'dcgan_digitz'" in result.stderr


def test_profile_attributes_operations_to_layers(single_device_mesh):
  """--profile's table: every traced operation of a real step, named after its layer."""
  from conftest import load_config, tiny
  from gen import bench
  rows, total = bench.profile(tiny(load_config("dcgan_digits"), batch_size=8), steps=2)
  sources = [source for _, source, _ in rows]
  assert total > 0 and all(ms >= 0 for _, _, ms in rows)
  assert abs(sum(ms for _, _, ms in rows) - total) < 1e-6 * total + 1e-9
  # Operations are traced back to the code that produced them: most have a source, and the
  # convolutions are among them.
  assert sum(bool(s) for s in sources) > len(sources) / 2, sources
  assert any("conv_general_dilated" in s for s in sources), sources
