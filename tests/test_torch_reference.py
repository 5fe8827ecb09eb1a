"""benchmarks/torch_reference.py: the same parameters as gen's models, and a step that trains."""
import importlib.util
import math

import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from conftest import ROOT, load_config  # noqa: E402
from gen import models  # noqa: E402

SHAPE = (28, 28, 1)


def _torch_reference():
  spec = importlib.util.spec_from_file_location("torch_reference",
                                                ROOT / "benchmarks" / "torch_reference.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


torch_reference = _torch_reference()


def _gen_param_sizes(experiment: str) -> dict[str, list[int]]:
  """{module name: sorted sizes of its params}, BatchNorm statistics (batch_stats) excluded."""
  config = load_config(experiment)
  key = jax.random.key(0)
  sizes = {}
  for name, module in models.build(config.model, SHAPE).items():
    if name == "vae":
      init = lambda m=module: m.init(key, jnp.zeros((1, *SHAPE)), key)
    elif name == "generator":
      init = lambda m=module: m.init(key, jnp.zeros((1, config.model.latent_dim)), train=False)
    else:
      init = lambda m=module: m.init(key, jnp.zeros((1, *SHAPE)), train=False)
    # Shapes only: nothing to compute.
    params = jax.eval_shape(init)["params"]
    sizes[name] = sorted(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))
  return sizes


@pytest.mark.parametrize("experiment", torch_reference.EXPERIMENTS)
def test_parameters_match_gen(experiment):
  gen_sizes = _gen_param_sizes(experiment)
  modules = torch_reference.build(experiment)
  assert set(modules) == set(gen_sizes)
  counts = torch_reference.parameter_count(experiment)
  for name, module in modules.items():
    # Tensor by tensor, not only the totals (flax kernels and torch weights differ in layout).
    assert sorted(p.numel() for p in module.parameters()) == gen_sizes[name], name
    assert counts[name] == sum(gen_sizes[name]), name


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("experiment", torch_reference.EXPERIMENTS)
def test_train_step_runs(experiment, channels_last):
  step, batch = torch_reference.make_train_step(experiment, batch_size=8,
                                                channels_last=channels_last)
  assert batch.shape == (8, 1, 28, 28)
  for _ in range(2):
    metrics = step(batch)
  assert metrics
  for name, value in metrics.items():
    assert math.isfinite(float(value)), name


def test_output_shapes():
  modules = torch_reference.build("dcgan_mnist")
  images = modules["generator"](torch.randn(2, 100))
  assert images.shape == (2, 1, 28, 28)
  assert modules["discriminator"](images).shape == (2,)
  logits, mean, log_var = torch_reference.build("vae_mnist")["vae"](torch.rand(2, 1, 28, 28))
  assert logits.shape == (2, 1, 28, 28)
  assert mean.shape == log_var.shape == (2, 16)
