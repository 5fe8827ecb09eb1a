"""The benchmark harness reports every number the issue names, checked against quantities
measured apart: a matmul's FLOPs, the compilation cache's hits, the matmul peak."""
import json
import os
import re
import subprocess
import sys
import tempfile


from conftest import ROOT, cli_env

KEYS = ("images_per_sec", "step_ms", "compile_s", "flops_per_step", "mfu", "input_images_per_sec",
        "sample_images_per_sec", "first_launch_s", "second_launch_s")


def test_bench_prints_one_json_object_with_the_numbers():
  result = subprocess.run(
      [sys.executable, "-m", "gen.bench", "gan_ring2d", "--steps=3", "--warmup=1", "--json",
       "--batch_size=16", "--config.model.hidden=(16,16)"], cwd=ROOT, env=cli_env(),
      capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  for key in KEYS:
    assert report[key] > 0, key
  assert report["experiment_batch_size"] == 16 and report["input_source"] == "dataset"
  # The step is slower than the matmul the peak was measured with.
  assert 0 < report["mfu"] < 1
  # The second launch is a second process that found the first one's programs in the cache.
  assert report["first_launch_cache_hits"] == 0 and report["second_launch_cache_hits"] > 0


def test_each_benchmark_compiles_into_an_empty_cache_of_its_own(tmp_path, monkeypatch):
  """A second benchmark in one process finds nothing of the first one's in the persistent
  cache, and the cache is removed and JAX's settings restored afterwards."""
  import jax
  import jax.numpy as jnp
  from gen import bench
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
  hits = []
  jax.monitoring.register_event_listener(
      lambda event, **kwargs: hits.append(event) if event.endswith("cache_hits") else None)
  before = jax.config.jax_compilation_cache_dir
  for scale in (2.0, 2.0):
    with bench.empty_compilation_cache() as cache:
      # A new function object each time: only the persistent cache could serve it.
      jax.jit(lambda x: jnp.sin(x) * scale)(jnp.ones(3)).block_until_ready()
      assert os.listdir(cache)  # The program was written to this cache.
  assert not hits
  assert jax.config.jax_compilation_cache_dir == before and not list(tmp_path.iterdir())


def test_flops_per_step_is_xlas_count_of_a_known_matmul():
  import jax
  import jax.numpy as jnp
  from gen.experiment import flops_per_step
  m, k, n = 64, 48, 32
  compiled = jax.jit(lambda a, b: a @ b).lower(jnp.ones((m, k)), jnp.ones((k, n))).compile()
  assert flops_per_step(compiled) == 2 * m * k * n


def test_flops_per_step_of_a_scanned_program_is_one_steps():
  # steps_per_call > 1 compiles the steps into a lax.scan; XLA counts the body once, so the
  # number is already per step (dividing it by the steps understated MFU 10x on GPUs).
  import jax
  import jax.numpy as jnp
  from gen.experiment import flops_per_step
  a = jnp.ones((64, 64))
  scanned = jax.jit(lambda a: jax.lax.scan(lambda c, _: (c @ a, None), a, None, length=10)[0])
  one = flops_per_step(jax.jit(lambda a: a @ a).lower(a).compile())
  assert one == 2 * 64**3
  assert abs(flops_per_step(scanned.lower(a).compile()) - one) < 0.01 * one


def test_the_peak_is_the_compute_dtypes():
  from gen import bench
  peak_32, source_32 = bench.peak_flops_per_sec("float32")
  peak_16, source_16 = bench.peak_flops_per_sec("bfloat16")
  assert "float32 matmul" in source_32 and "bfloat16 matmul" in source_16
  assert peak_32 > 0 and peak_16 > 0
  assert bench.VENDOR_PEAKS[("NVIDIA H100 80GB HBM3", "bfloat16")] > 10 * bench.VENDOR_PEAKS[
      ("NVIDIA H100 80GB HBM3", "float32")]


def test_the_cpu_is_named_by_its_microarchitecture(tmp_path):
  # Two cloud CPUs that both call themselves "AMD EPYC": a Zen 3 (Milan) and a Zen 5 (Turin).
  from gen import bench
  names = []
  for family, model, flags in ((25, 1, "avx2"), (26, 2, "avx2 avx512f avx512_bf16")):
    cpuinfo = tmp_path / f"cpuinfo-{family}"
    cpuinfo.write_text("".join(
        f"processor\t: {i}\nvendor_id\t: AuthenticAMD\ncpu family\t: {family}\n"
        f"model\t\t: {model}\nmodel name\t: AMD EPYC\nflags\t\t: fpu {flags}\n\n"
        for i in range(2)))
    names.append(bench.cpu(str(cpuinfo)))
  assert [(n["microarchitecture"], n["vector"]) for n in names] == [
      ("Zen 3", "AVX2"), ("Zen 5", "AVX-512 (BF16)")]
  assert bench.microarchitecture("AuthenticAMD", 25, 0x11) == "Zen 4"  # Genoa.
  assert bench.microarchitecture("GenuineIntel", 6, 143) == "Sapphire Rapids"
  assert bench.microarchitecture("GenuineIntel", 6, 42) == "family 6 model 42"


def test_bench_rejects_an_unknown_experiment():
  result = subprocess.run([sys.executable, "-m", "gen.bench", "dcgan_digitz"], cwd=ROOT,
                          env=cli_env(), capture_output=True, text=True, timeout=60)
  assert result.returncode != 0 and "unknown experiment 'dcgan_digitz'" in result.stderr


def test_profile_attributes_operations_to_layers(single_device_mesh, tmp_path, monkeypatch):
  """--profile's table: every traced operation of a real step, named after its layer; the
  trace itself is not left behind."""
  from conftest import load_config, tiny
  from gen import bench
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
  rows, total = bench.profile(tiny(load_config("dcgan_digits"), batch_size=8), steps=2)
  assert not list(tmp_path.iterdir())
  sources = [source for _, source, _ in rows]
  assert total > 0 and all(ms >= 0 for _, _, ms in rows)
  assert abs(sum(ms for _, _, ms in rows) - total) < 1e-6 * total + 1e-9
  # Operations are traced back to the code that produced them: most have a source, and the
  # convolution layers' arithmetic (XLA's convolutions, or the matrix products gen computes
  # small images' convolutions as) is among them, under the layer's name.
  assert sum(bool(s) for s in sources) > len(sources) / 2, sources
  assert any(re.search(r"(Conv|ConvTranspose)_\d+\._compute/(conv_general_dilated|dot_general)", s)
             for s in sources), sources
