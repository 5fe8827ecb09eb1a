"""The family interface: a complete family defined here, outside gen, trains through the loop
with everything the loop gives gen's own families; gen's shared code stays free of family
names and import cycles."""
import ast
import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import ROOT, cli_env, load_config
from gen import UsageError, checkpoint, checks, data, families, models, train
from gen.experiment import build
from gen.families import EvalGroup, ModuleState, TrainState, init_variables


class GaussianDensity(nn.Module):
  """log N(x; mean, diag(exp(log_std))²) per example, for points x [B, 2]."""

  @nn.compact
  def __call__(self, x):
    mean = self.param("mean", nn.initializers.zeros, (x.shape[-1],))
    log_std = self.param("log_std", nn.initializers.zeros, (x.shape[-1],))
    z = (x - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * jnp.log(2 * jnp.pi), axis=-1)


def _fit(context):
  """The family's own evaluation group: the fitted Gaussian's test NLL, and the NLL of the
  closed-form maximum-likelihood Gaussian of the test split (sample mean and std)."""
  x = context.split.read(np.arange(context.split.num_examples))["x"].astype(np.float64)
  mle_nll = float(np.mean(np.sum(0.5 * ((x - x.mean(0)) / x.std(0))**2 + np.log(x.std(0))
                                 + 0.5 * np.log(2 * np.pi), axis=-1)))
  density = context.experiment.models["density"]

  def fit(state):
    params = state.modules["density"].params
    nll = -float(jnp.mean(density.apply({"params": params}, jnp.asarray(x, jnp.float32))))
    return {"nll": nll, "mle_nll": mle_nll}

  return fit


def _make_train_step(models, optimizers, config):
  density = models["density"]

  def train_step(state, batch, rng):
    module = state.modules["density"]
    nll = lambda params: -jnp.mean(density.apply({"params": params}, batch["points"]))
    loss, grads = jax.value_and_grad(nll)(module.params)
    return state.next(density=module.apply_gradients(optimizers["density"], grads)), {"nll": loss}

  return train_step


def _make_generate(models, config):
  def generate(state, key, labels):
    params = state.modules["density"].params
    noise = jax.random.normal(key, (labels.shape[0], 2))
    return params["mean"] + jnp.exp(params["log_std"]) * noise

  return generate


def _init_state(models, optimizers, config, spec, key):
  init_key, rng = jax.random.split(key)
  params, _ = init_variables(models["density"], init_key, jnp.zeros((1, *spec["points"].shape)))
  return TrainState.create(rng, {"density": ModuleState.create(params, optimizers["density"])})


def _validate(config):
  checks.positive(config.density.learning_rate, "density.learning_rate")


def _make_optimizers(config, names):
  import optax
  return {name: optax.adam(config.density.learning_rate) for name in names}


# A family with its own batch field name ("points", read from the dataset's "x"), optimizer,
# snapshot (text), functions and evaluation group.
DENSITY = types.SimpleNamespace(
    validate=_validate,
    batch_spec=lambda config, dataset: {"points": dataset.spec["x"]},
    init_state=_init_state,
    make_train_step=_make_train_step,
    make_optimizers=_make_optimizers,
    throughput_unit=lambda config: ("points", 1),
    make_functions=lambda models, config: {"generate": _make_generate(models, config)},
    snapshot_batch=lambda config, dataset: {"x": dataset.read(np.arange(4))["x"]},
    make_snapshots=lambda models, config: lambda state, batch, key: {
        "samples": state.modules["density"].params["mean"]},
    render_snapshots=lambda outputs, batch: {"samples": f"mean = {np.asarray(outputs['samples'])}"},
    eval_groups={"fit": EvalGroup(_fit)},
)


def _points_dataset(config, split):
  """ring2d with its examples under "points" as well, as this family's data would be."""
  ring = data.mixture("ring2d", split)
  spec = {**ring.spec, "points": ring.spec["x"]}
  return dataclasses.replace(ring, name="ring2d", spec=spec,
                             read=lambda idx: {**ring.read(idx), "points": ring.read(idx)["x"]})


@pytest.fixture
def density_family(monkeypatch):
  monkeypatch.setattr(families, "_REGISTERED", {})
  monkeypatch.setattr(models, "_REGISTERED", {})
  monkeypatch.setitem(data.DATASETS, "ring_points", _points_dataset)
  families.register("density", DENSITY)
  models.register("gaussian_density", lambda model_config, shape: {"density": GaussianDensity()},
                  "density")


def density_config(num_steps):
  config = load_config("gan_ring2d")
  values = config.to_dict()
  values.pop("gan")
  values.update(num_steps=num_steps, batch_size=256, log_every=10, sample_every=20,
                checkpoint_every=20, eval_every=20)
  values["dataset"] = {"name": "ring_points", "split": "train"}
  values["model"] = {"name": "gaussian_density", "dtype": "float32"}
  values["density"] = {"learning_rate": 0.02}
  values["optimizer"] = {}
  values["eval"] = {"metrics": ("fit", "modes"), "split": "test", "num_samples": 2500,
                    "best_metric": "nll"}
  config = ml_collections.ConfigDict(values)
  config.lock()
  return config


def _leaves(state):
  return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                     else x) for x in jax.tree.leaves(jax.device_get(state))]


def test_a_family_defined_outside_gen_trains_resumes_evaluates_and_reports(
    density_family, tmp_path, single_device_mesh):
  resumed_dir, straight_dir = tmp_path / "resumed", tmp_path / "straight"
  train.train(density_config(20), str(resumed_dir), single_device_mesh)
  resumed = train.train(density_config(300), str(resumed_dir), single_device_mesh)
  straight = train.train(density_config(300), str(straight_dir), single_device_mesh)
  # Exact resume: the run stopped at 20 and continued is bitwise the straight run.
  for a, b in zip(_leaves(resumed), _leaves(straight)):
    np.testing.assert_array_equal(a, b)
  # It fitted the data by maximum likelihood: close to the closed-form fit of the ring
  # (mean 0, per-axis std sqrt(r²/2 + σ²) = 1.414).
  params = jax.device_get(straight.params["density"])
  np.testing.assert_allclose(params["mean"], 0.0, atol=0.1)
  np.testing.assert_allclose(np.exp(params["log_std"]), np.sqrt(2 + 0.02**2), rtol=0.05)
  # Its own evaluation group and a shared one (which calls its "generate"), the best
  # checkpoint by its metric, its throughput unit, its text snapshots, and the report.
  evaluation = json.loads((straight_dir / "eval" / "300.json").read_text())
  assert evaluation["mle_nll"] <= evaluation["nll"] < evaluation["mle_nll"] + 0.01
  assert evaluation["modes"] >= 1
  assert json.loads((straight_dir / "eval" / "best.json").read_text())["metric"] == "nll"
  records = [json.loads(line) for line in (straight_dir / "metrics.jsonl").read_text().splitlines()]
  assert all(r["points_per_sec"] > 0 for r in records if "nll" in r)
  assert (straight_dir / "samples" / "step_300.txt").read_text().startswith("mean = [")
  summary = (straight_dir / "summary.md").read_text()
  assert "points/s" in summary and "nll" in summary


def test_a_family_defined_outside_gen_has_the_non_finite_guard(density_family, tmp_path,
                                                                single_device_mesh):
  experiment = build(density_config(2), single_device_mesh)
  state = experiment.init_state()
  before = jax.device_get(state.params)
  step = experiment.compile_train_step(state)
  from gen import sharding
  batch = experiment.read_batch(np.arange(experiment.step_batch_size))
  batch["points"][5] = np.nan
  state, metrics = step(state, sharding.shard_batch(batch, experiment.mesh))
  assert float(metrics["update_skipped"]) == 1.0 and int(state.step) == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), before)


def test_register_refuses_gen_families_and_incomplete_ones(monkeypatch):
  monkeypatch.setattr(families, "_REGISTERED", {})
  with pytest.raises(ValueError, match="one of gen's own families"):
    families.register("gan", DENSITY)
  with pytest.raises(ValueError, match=r"lacks \['init_state', 'make_train_step'\]"):
    families.register("half", types.SimpleNamespace(validate=None, batch_spec=None))
  with pytest.raises(UsageError, match="Unknown family 'diffusion'"):
    families.get("diffusion")


def test_every_model_file_names_a_family_and_builds_from_its_experiment():
  for name in models.builtin():
    assert models.family(ml_collections.ConfigDict({"name": name})) in families.builtin(), name
  with pytest.raises(UsageError, match=r"Unknown config.model.name='layers'"):
    models.family(ml_collections.ConfigDict({"name": "layers"}))


def _gen_modules() -> dict[str, set[str]]:
  """{module: the gen modules it imports, at any depth of its code}."""
  modules = {}
  for path in (ROOT / "gen").rglob("*.py"):
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    imports = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gen"):
        imports.add(node.module)
        imports.update(f"{node.module}.{alias.name}" for alias in node.names)
      elif isinstance(node, ast.Import):
        imports.update(alias.name for alias in node.names if alias.name.startswith("gen"))
    modules[name] = imports
  return {name: {i for i in imports if i in modules and i != name}
          for name, imports in modules.items()}


def test_gen_has_no_import_cycle():
  graph = _gen_modules()
  assert {"gen.experiment", "gen.train", "gen.evaluate", "gen.families"} <= set(graph)
  visiting, done = [], set()

  def visit(module):
    if module in visiting:
      raise AssertionError("import cycle: " + " -> ".join(visiting[visiting.index(module):]
                                                           + [module]))
    if module in done:
      return
    visiting.append(module)
    for imported in graph[module]:
      # A package's own submodules import it; that is not a cycle unless it imports them.
      if not imported.startswith(module + "."):
        visit(imported)
    visiting.pop()
    done.add(module)

  for module in sorted(graph):
    visit(module)
  assert "gen.train" not in graph["gen.evaluate"] and "gen.train" not in graph["gen.experiment"]


def test_shared_code_never_reads_a_family_config_block_or_name():
  names = "|".join(families.builtin())
  forbidden = re.compile(rf"config\.({names})\b|[\"']({names})[\"'] in config|"
                         rf"family(\.name)?\s*[!=]=|==\s*[\"']({names})[\"']")
  shared = [p for p in (ROOT / "gen").rglob("*.py") if "families" not in p.parts or
            p.name == "__init__.py"]
  shared = [p for p in shared if p.parent.name != "models" or p.name == "__init__.py"]
  hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in shared
          for i, line in enumerate(p.read_text().splitlines(), 1) if forbidden.search(line)]
  assert not hits, hits


def test_importing_gen_changes_no_environment():
  code = ("import os; before = dict(os.environ)\n"
          "import gen, gen.experiment, gen.train, gen.evaluate, gen.bench, gen.main\n"
          "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())")
  env = {k: v for k, v in cli_env().items() if k != "XLA_FLAGS"}
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("overrides, message", [
    ({"model.latent_dim": 0}, "config.model.latent_dim=0 must be an integer of at least 1"),
    ({"optimizer.generator.learning_rate": -1.0},
     "config.optimizer.generator.learning_rate=-1.0 must be positive"),
    ({"optimizer.discriminator.b2": 1.0}, r"config.optimizer.discriminator.b2=1.0 must be in \[0"),
    ({"model.generator_features": (16,)}, r"model.generator_features=\(16,\) must be 2 or more"),
    ({"gan.real_label": 0.0}, r"config.gan.real_label=0.0 must be in \(0.0, 1.0\]"),
    ({"log_every": 0}, "config.log_every=0 must be an integer of at least 1"),
])
def test_config_values_are_checked_before_compiling(overrides, message, single_device_mesh):
  from conftest import override
  config = override(load_config("dcgan_digits"), overrides)
  with pytest.raises(UsageError, match=message):
    build(config, single_device_mesh)


def test_a_checkpoint_of_another_format_names_both_formats(tmp_path, single_device_mesh):
  from conftest import tiny
  config = tiny(load_config("gan_ring2d"), num_steps=2, checkpoint_every=2)
  train.train(config, str(tmp_path), single_device_mesh)
  # As a checkpoint from before the format was recorded: no "meta" item.
  import shutil
  shutil.rmtree(tmp_path / "checkpoints" / "2" / "meta")
  with pytest.raises(UsageError, match="checkpoint format 1, and this gen reads format 2"):
    train.train(config, str(tmp_path), single_device_mesh)
  assert os.listdir(tmp_path / "checkpoints") == ["2"]  # Not set aside: it is not damaged.
  assert checkpoint.FORMAT == 2


def test_profile_steps_trace_a_window_of_the_run(tmp_path, single_device_mesh):
  from conftest import tiny
  config = tiny(load_config("gan_ring2d"), num_steps=13, profile_steps=2)
  train.train(config, str(tmp_path), single_device_mesh)
  traces = list(pathlib.Path(tmp_path, "plugins", "profile").glob("*/*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
