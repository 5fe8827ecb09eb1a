"""Throughput benchmark of an experiment's train step, input pipeline and sampler.

  python -m gen.bench <experiment> [--batch_size=B] [--steps=N] [--json] [--config.KEY=VALUE]

The train step runs on one batch of the dataset already on the devices, so the number is
the step's own speed; the input pipeline and the whole loop are measured apart, so a reader
sees which of the two bounds a run. FLOPs come from XLA's cost analysis of the compiled
step; utilisation is against a matmul peak measured in the same process on CPU, or the
vendor's dense peak on GPUs and TPUs.
"""
import collections
import contextlib
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

from absl import app, flags

from gen import cli
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Global batch (default: the config's).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed train steps (after warm-up).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps before timing.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
_PROFILE = flags.DEFINE_integer("profile", 0, "Instead: print the N most expensive XLA operations "
                                "of the step, traced with jax.profiler, with the layers they come from.")
_LAUNCHES = flags.DEFINE_bool("launches", True, "Also time a first and a second launch (two more "
                              "processes); --nolaunches for the step alone.")
_FIRST_STEP = flags.DEFINE_bool("first_step", False, "Instead: build, compile and run one step, "
                                "then print the persistent cache's hits (what a launch measures).")

# Dense peak FLOP/s per chip by device kind and compute dtype, from the vendors' data sheets
# (NVIDIA: without sparsity; TPUs: float32 matmuls run on the MXU in bfloat16 passes, so the
# bfloat16 peak is theirs too).
VENDOR_PEAKS = {
    ("NVIDIA H100 80GB HBM3", "bfloat16"): 989e12, ("NVIDIA H100 80GB HBM3", "float32"): 67e12,
    ("NVIDIA H100 PCIe", "bfloat16"): 756e12, ("NVIDIA H100 PCIe", "float32"): 51e12,
    ("NVIDIA H200", "bfloat16"): 989e12, ("NVIDIA H200", "float32"): 67e12,
    ("NVIDIA A100-SXM4-80GB", "bfloat16"): 312e12, ("NVIDIA A100-SXM4-80GB", "float32"): 19.5e12,
    ("NVIDIA A100-SXM4-40GB", "bfloat16"): 312e12, ("NVIDIA A100-SXM4-40GB", "float32"): 19.5e12,
    ("TPU v4", "bfloat16"): 275e12, ("TPU v4", "float32"): 275e12,
    ("TPU v5 lite", "bfloat16"): 197e12, ("TPU v5 lite", "float32"): 197e12,
    ("TPU v5", "bfloat16"): 459e12, ("TPU v5", "float32"): 459e12,
    ("TPU v6 lite", "bfloat16"): 918e12, ("TPU v6 lite", "float32"): 918e12,
}


# Cloud VMs often report a bare "AMD EPYC" or "Intel(R) Xeon(R) Processor", under which CPUs
# of very different speed hide: (vendor, family) -> [(first model, last model, name)].
MICROARCHITECTURES = {
    ("AuthenticAMD", 23): [(0x00, 0x2f, "Zen"), (0x30, 0xff, "Zen 2")],
    ("AuthenticAMD", 25): [(0x00, 0x0f, "Zen 3"), (0x10, 0x1f, "Zen 4"), (0x20, 0x5f, "Zen 3"),
                           (0x60, 0xaf, "Zen 4")],
    ("AuthenticAMD", 26): [(0x00, 0xff, "Zen 5")],
    ("GenuineIntel", 6): [(85, 85, "Skylake/Cascade Lake"), (106, 106, "Ice Lake"),
                          (143, 143, "Sapphire Rapids"), (173, 173, "Granite Rapids"),
                          (175, 175, "Sierra Forest"), (207, 207, "Emerald Rapids")],
}


def microarchitecture(vendor: str, family: int, model: int) -> str:
  """E.g. "Zen 5" for ("AuthenticAMD", 26, 2); "family F model M" where it is not known."""
  for first, last, name in MICROARCHITECTURES.get((vendor, family), []):
    if first <= model <= last:
      return name
  return f"family {family} model {model}"


def cpu(cpuinfo: str = "/proc/cpuinfo") -> dict:
  """The CPU this runs on: {"model", "microarchitecture" (x86: e.g. "Zen 5", else ""), "vector"
  (its widest vector and matrix extensions, e.g. "AVX-512 (BF16, VNNI)"), "cores"}, read from
  `cpuinfo` where there is one."""
  import platform
  model, features, fields = platform.processor() or platform.machine(), set(), {}
  try:
    with open(cpuinfo) as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model in (platform.machine(), platform.processor()):
          model = value.strip()
        elif key in ("flags", "Features"):
          features = set(value.split())
        elif key in ("vendor_id", "cpu family", "model"):
          fields.setdefault(key, value.strip())
  except OSError:
    pass
  extras = [name for flag, name in (("avx512_bf16", "BF16"), ("avx512_vnni", "VNNI"),
                                    ("amx_tile", "AMX")) if flag in features]
  vector = ("AVX-512" if "avx512f" in features else "AVX2" if "avx2" in features else
            "NEON" if "asimd" in features else "no AVX2")
  arch = ""
  if fields.get("cpu family", "").isdigit() and fields.get("model", "").isdigit():
    arch = microarchitecture(fields.get("vendor_id", ""), int(fields["cpu family"]),
                             int(fields["model"]))
  return {"model": model, "microarchitecture": arch,
          "vector": vector + (f" ({', '.join(extras)})" if extras else ""),
          "cores": os.cpu_count()}


def describe_cpu() -> str:
  """E.g. "AMD EPYC (Zen 3), AVX2, 2 cores"."""
  info = cpu()
  arch = f" ({info['microarchitecture']})" if info["microarchitecture"] else ""
  return f"{info['model']}{arch}, {info['vector']}, {info['cores']} cores"


def _median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def peak_flops_per_sec(dtype: str = "float32") -> tuple[float, str]:
  """(peak FLOP/s of all devices in the compute `dtype`, where the number comes from): the
  vendor's peak on GPUs and TPUs, else the fastest of 10 2048x2048 matmuls in `dtype` here."""
  import jax
  import jax.numpy as jnp
  device = jax.devices()[0]
  if device.platform != "cpu":
    peak = VENDOR_PEAKS.get((device.device_kind, dtype))
    if peak is not None:
      return peak * jax.device_count(), f"vendor peak of {device.device_kind}, {dtype}"
  n = 2048
  a = jnp.ones((n, n), dtype)
  matmul = jax.jit(lambda a: a @ a)
  matmul(a).block_until_ready()
  seconds = min(_median_seconds(lambda: matmul(a).block_until_ready(), 1) for _ in range(10))
  return 2 * n**3 / seconds, f"measured {n}x{n} {dtype} matmul on {device.device_kind}"


def device_batch(experiment):
  """One training batch of the experiment (its family's batch spec), on the mesh."""
  from gen import data, sharding
  batch = next(iter(data.batch_dataset(experiment.dataset, experiment.step_batch_size,
                                       experiment.config.seed, experiment.spec)))
  return sharding.shard_batch(batch, experiment.mesh)


@contextlib.contextmanager
def dataset_or_mock(config):
  """Yields where the examples come from: the config's dataset, or tfds's mock data of the
  same shapes when a tfds dataset is not prepared here (speed does not depend on pixels)."""
  from gen import UsageError, data
  try:
    data.load(config.dataset)
  except UsageError:
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=10_000):
      yield "tfds mock data"
    return
  yield "dataset"


def benchmark(config, steps: int = 20, warmup: int = 3, launch_args=None) -> dict:
  """Measures the experiment of `config`; returns the numbers as a dict. With `launch_args`
  (the `python -m gen.bench` arguments that give `config`), also the time from launch to the
  first step of a first and a second process, the second with the persistent compilation
  cache the first filled."""
  launches = _launches(launch_args) if launch_args is not None else {}
  with dataset_or_mock(config) as source, empty_compilation_cache():
    return {**_benchmark(config, steps, warmup), **launches, "input_source": source}


_CACHE_SETTINGS = {"jax_compilation_cache_dir": None,
                   "jax_persistent_cache_min_compile_time_secs": 0.0,
                   "jax_persistent_cache_min_entry_size_bytes": 0}


@contextlib.contextmanager
def empty_compilation_cache():
  """A new, empty persistent compilation cache that keeps every program, removed afterwards,
  with JAX's previous cache settings restored. JAX opens its cache once per process, so it
  is reset on the way in and out: without that, a second benchmark in one process (as
  benchmarks/conv_lowering.py alternates them) compiled from the first one's cache."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache
  previous = {name: getattr(jax.config, name) for name in _CACHE_SETTINGS}
  with tempfile.TemporaryDirectory(prefix="gen-bench-cache-") as cache:
    compilation_cache.reset_cache()
    for name, value in {**_CACHE_SETTINGS, "jax_compilation_cache_dir": cache}.items():
      jax.config.update(name, value)
    try:
      yield cache
    finally:
      compilation_cache.reset_cache()
      for name, value in previous.items():
        jax.config.update(name, value)


def _launches(launch_args) -> dict:
  """Wall time of two `gen.bench --first_step` processes sharing an empty compilation cache."""
  import subprocess
  results = {}
  with tempfile.TemporaryDirectory(prefix="gen-bench-cache-") as cache:
    env = {**os.environ, **{name.upper(): str(value) for name, value in
                            {**_CACHE_SETTINGS, "jax_compilation_cache_dir": cache}.items()}}
    for name in ("first_launch", "second_launch"):
      start = time.perf_counter()
      child = subprocess.run([sys.executable, "-m", "gen.bench", *launch_args, "--first_step"],
                             env=env, capture_output=True, text=True, check=True)
      results[f"{name}_s"] = time.perf_counter() - start
      results[f"{name}_cache_hits"] = json.loads(child.stdout.strip().splitlines()[-1])["cache_hits"]
  return results


def first_step(config) -> dict:
  """Builds, compiles and runs one train step; {"cache_hits": persistent-cache hits}."""
  import jax
  from gen import experiment as experiment_lib
  hits = []
  jax.monitoring.register_event_listener(
      lambda event, **kwargs: hits.append(event) if event.endswith("cache_hits") else None)
  experiment = experiment_lib.build(config)
  state = experiment.init_state()
  state, metrics = experiment.compile_train_step(state)(state, device_batch(experiment))
  jax.block_until_ready(metrics)
  return {"cache_hits": len(hits)}


def _benchmark(config, steps: int, warmup: int) -> dict:
  import jax
  from gen import data, experiment as experiment_lib, sharding

  experiment = experiment_lib.build(config)
  state = experiment.init_state()
  per_call = experiment.steps_per_call
  start = time.perf_counter()  # In benchmark()'s empty cache: what a first launch compiles.
  step = experiment.compile_train_step(state, per_call)
  compile_s = time.perf_counter() - start

  flops_per_step = experiment_lib.flops_per_step(step)

  batch = device_batch(experiment)
  if per_call > 1:
    batch = experiment.stack_batches([batch] * per_call)
  for _ in range(warmup):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    begin = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - begin)
  step_s = statistics.median(times) / per_call
  batch_size = experiment.step_batch_size  # Examples a step consumes (n_critic batches for GANs).
  unit, per_example = experiment.family.throughput_unit(config)

  # The input pipeline alone, as the loop consumes it (prefetching onto the mesh).
  batches = data.DeviceIterator(experiment.dataset, batch_size, config.seed, experiment.mesh,
                                spec=experiment.spec)
  jax.block_until_ready(next(batches))
  begin = time.perf_counter()
  for _ in range(steps):
    jax.block_until_ready(next(batches))
  input_s = (time.perf_counter() - begin) / steps

  # The loop: steps fed by the pipeline, synchronising only at the end, as train() does.
  feed = lambda: next(batches) if per_call == 1 else experiment.stack_batches(
      [next(batches) for _ in range(per_call)])
  begin = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, feed())
  jax.block_until_ready(metrics)
  loop_s = (time.perf_counter() - begin) / steps / per_call
  batches.close()

  sampling = {}
  if "generate" in experiment.functions:
    generate = experiment.compile_generate()
    labels = jax.device_put(experiment.sample_labels(config.batch_size),
                            sharding.batch_sharding(experiment.mesh))
    generate(state, jax.random.key(0), labels).block_until_ready()
    sample_s = _median_seconds(
        lambda: generate(state, jax.random.key(1), labels).block_until_ready(), steps)
    sampling = {f"sample_{unit}_per_sec": config.batch_size * per_example / sample_s}

  peak, peak_source = peak_flops_per_sec(config.model.dtype)
  family_numbers = experiment.family.benchmark(experiment, state, step_s, peak)
  return {
      "experiment_batch_size": batch_size,
      "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
      "cpu": describe_cpu(),
      f"{unit}_per_sec": batch_size * per_example / step_s,
      "step_ms": 1e3 * step_s,
      "compile_s": compile_s,
      "flops_per_step": flops_per_step,
      "flops_per_sec": flops_per_step / step_s,
      "peak_flops_per_sec": peak,
      "peak_source": peak_source,
      "mfu": flops_per_step / step_s / peak,
      f"input_{unit}_per_sec": batch_size * per_example / input_s,
      f"loop_{unit}_per_sec": batch_size * per_example / loop_s,
      **sampling,
      **family_numbers,
  }


def _op_sources(hlo_text: str) -> dict[str, tuple[str, str]]:
  """{HLO instruction name: (opcode, source op_name)} of a compiled module's text. A fusion
  without metadata of its own is named after the convolution or dot inside it."""
  inner, computation = {}, None
  for line in hlo_text.splitlines():
    header = re.match(r"%?([\w.\-]+) \(.*\{$", line)
    if header:
      computation = header.group(1)
    op_name = re.search(r'op_name="([^"]*)"', line)
    if computation and op_name and (computation not in inner or re.search(
        r"conv_general_dilated|dot_general", op_name.group(1))):
      inner[computation] = op_name.group(1)
  sources = {}
  for line in hlo_text.splitlines():
    match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = \S+ (\w[\w\-]*)\(", line)
    if not match:
      continue
    name, opcode = match.groups()
    op_name = re.search(r'op_name="([^"]*)"', line)
    calls = re.search(r"calls=%?([\w.\-]+)", line)
    kind = re.search(r"kind=(\w+)", line)
    source = op_name.group(1) if op_name else inner.get(calls.group(1), "") if calls else ""
    sources[name] = (f"{opcode}:{kind.group(1)}" if kind else opcode, source)
  return sources


def _short(op_name: str) -> str:
  # jit(<lambda>)/jvp(Generator)/ConvTranspose_1/conv_general_dilated -> readable path.
  parts = [p for p in op_name.split("/") if not p.startswith("jit(")]
  return "/".join(parts)[-90:]


def profile(config, steps: int) -> tuple[list[tuple[str, str, float]], float]:
  """([(operation, source, ms per step)], ms per step) of the experiment's step."""
  import jax
  from gen import experiment as experiment_lib
  experiment = experiment_lib.build(config)
  state = experiment.init_state()
  step = experiment.compile_train_step(state)
  sources = _op_sources(step.as_text())
  batch = device_batch(experiment)
  for _ in range(3):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)

  def timed_step():
    nonlocal state
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)

  step_ms = 1e3 * _median_seconds(timed_step, steps)
  with tempfile.TemporaryDirectory(prefix="gen-profile-") as trace_dir:  # Tens of MB a trace.
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(steps):
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
    (path,) = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  totals = collections.Counter()
  for event in events:
    if event.get("ph") == "X" and event.get("name") in sources:
      totals[event["name"]] += event["dur"] / 1e3 / steps
  rows = [(f"{name} ({sources[name][0]})", _short(sources[name][1]), ms)
          for name, ms in totals.most_common()]
  # XLA:CPU runs some kernels (Eigen's convolutions) asynchronously, without trace events
  # of their own: their time is what the untraced step spends beyond the traced operations.
  untraced = step_ms - sum(totals.values())
  if untraced > 0:
    rows = sorted(rows + [("between traced operations (dispatch, waiting, untraced kernels)", "",
                           untraced)], key=lambda row: -row[2])
  return rows, max(step_ms, sum(totals.values()))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.quiet_library_logs()
  cli.set_xla_defaults()
  config = cli.CONFIG.value
  if _BATCH_SIZE.value:
    config.batch_size = _BATCH_SIZE.value
  if _FIRST_STEP.value:
    with dataset_or_mock(config):
      print(json.dumps(first_step(config)))
    return
  if _PROFILE.value:
    with dataset_or_mock(config):
      rows, total = profile(config, _STEPS.value)
    print("| operation | source | ms / step | share |\n| --- | --- | ---: | ---: |")
    for name, source, ms in rows[:_PROFILE.value]:
      print(f"| {name} | {source} | {ms:.2f} | {100 * ms / total:.1f}% |")
    print(f"| all {len(rows)} operations | | {total:.2f} | 100% |")
    return
  # The arguments that give this config, for the two launches it times.
  launch_args = [arg for arg in sys.argv[1:] if not arg.startswith(("--json", "--steps",
                                                                     "--warmup", "--profile"))]
  result = benchmark(config, _STEPS.value, _WARMUP.value,
                     launch_args if _LAUNCHES.value else None)
  if _JSON.value:
    print(json.dumps(result))
  else:
    for key, value in result.items():
      print(f"{key:>24}: {value:.4g}" if isinstance(value, float) else f"{key:>24}: {value}")


def run():
  """`python -m gen.bench <experiment> ...`: the experiment name stands for its config file."""
  app.run(main, argv=cli.experiment_as_config(sys.argv), flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
