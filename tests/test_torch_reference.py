"""benchmarks/torch_reference.py: the same parameters as gen's models, a step that trains, and
for CycleGAN the same losses as gen's step from the same weights."""
import importlib.util
import math
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from conftest import ROOT, load_config  # noqa: E402
from gen import cli, families, models  # noqa: E402


def _torch_reference():
  spec = importlib.util.spec_from_file_location("torch_reference",
                                                ROOT / "benchmarks" / "torch_reference.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


torch_reference = _torch_reference()


def _test_sizes(experiment: str) -> dict:
  """The model sizes the experiment's TEST_OVERRIDES shrink ({"generator_width": 4, ...}), as
  keyword arguments of its reference's builder: one narrow residual block instead of six."""
  return {key.removeprefix("model."): value
          for key, value in cli.test_overrides(experiment).items() if key.startswith("model.")}


def _gen_side(config, fields):
  """(family, models, optimizers, batch spec) of gen for a batch of `fields` {name: [C, H, W]}:
  the family's own batch spec of a dataset with those fields, so no test names a module's
  init arguments."""
  spec = {name: jax.ShapeDtypeStruct((*shape[1:], shape[0]), jnp.float32)
          for name, shape in fields.items()}
  dataset = types.SimpleNamespace(name="synthetic", spec=spec)
  family = families.get(models.family(config.model))
  spec = family.batch_spec(config, dataset)
  modules = models.build(config.model, spec["x"].shape)
  return family, modules, family.make_optimizers(config, list(modules)), spec


def _gen_param_sizes(experiment: str) -> dict[str, list[int]]:
  """{module name: sorted sizes of its params}, BatchNorm statistics (batch_stats) excluded."""
  config = load_config(experiment)
  fields = torch_reference.EXPERIMENTS[experiment].fields
  family, modules, optimizers, spec = _gen_side(config, fields)
  # The family's own initial state, shapes only: nothing to compute.
  state = jax.eval_shape(lambda: family.init_state(modules, optimizers, config, spec,
                                                   jax.random.key(0)))
  return {name: sorted(math.prod(leaf.shape) for leaf in jax.tree.leaves(m.params))
          for name, m in state.modules.items()}


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


@pytest.mark.parametrize("experiment", torch_reference.EXPERIMENTS)
def test_reference_uses_the_experiments_batch(experiment):
  config = load_config(experiment)
  reference = torch_reference.EXPERIMENTS[experiment]
  assert reference.batch_size == config.batch_size
  # Its fields are what gen's family trains on, at the dataset's shapes.
  family = families.get(models.family(config.model))
  fields = {name: jax.ShapeDtypeStruct((*s[1:], s[0]), jnp.float32)
            for name, s in reference.fields.items()}
  assert set(family.batch_spec(config, types.SimpleNamespace(name="synthetic", spec=fields))
             ) == set(reference.fields)


def test_cyclegan_options_are_the_experiments():
  config = load_config("cyclegan_digits")
  assert torch_reference.CYCLEGAN == {k: config.cyclegan[k] for k in torch_reference.CYCLEGAN}
  assert config.gan.loss == "least_squares"
  for name in ("generator", "inverse_generator", "discriminator", "inverse_discriminator"):
    assert dict(config.optimizer[name]) == {"learning_rate": 2e-4, "b1": 0.5, "b2": 0.999}


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("experiment", torch_reference.EXPERIMENTS)
def test_train_step_runs(experiment, channels_last):
  step, batch = torch_reference.make_train_step(
      experiment, batch_size=8, channels_last=channels_last,
      modules=torch_reference.build(experiment, **_test_sizes(experiment)))
  fields = torch_reference.EXPERIMENTS[experiment].fields
  assert {name: tuple(x.shape) for name, x in batch.items()} == {
      name: (8, *shape) for name, shape in fields.items()}
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
  cyclegan = torch_reference.build("cyclegan_digits")
  images = cyclegan["generator"](torch.rand(2, 3, 32, 32) * 2 - 1)
  assert images.shape == (2, 3, 32, 32)
  assert cyclegan["discriminator"](images).shape == (2, 16, 16)  # One logit per 16x16 patch.


def _flax_layers(params):
  """The parameter dicts of a flax module's layers, in the order the layers were created."""
  if all(not isinstance(v, dict) for v in params.values()):
    return [params]
  return [layer for value in params.values() for layer in _flax_layers(value)]


def copy_weights(params, module):
  """Sets the torch `module`'s weights to flax `params`, layer by layer in creation order:
  convolution kernels HWIO -> OIHW, transposed ones flipped (torch's flip the kernel) ->
  [I, O, H, W], InstanceNorm scale -> weight."""
  layers = [m for m in module.modules() if list(m.parameters(recurse=False))]
  flax_layers = _flax_layers(params)
  assert len(layers) == len(flax_layers)
  with torch.no_grad():
    for layer, values in zip(layers, flax_layers):
      values = {k: torch.from_numpy(np.array(v)) for k, v in values.items()}
      if isinstance(layer, torch.nn.ConvTranspose2d):
        layer.weight.copy_(values["kernel"].flip(0, 1).permute(2, 3, 0, 1))
      elif isinstance(layer, torch.nn.Conv2d):
        layer.weight.copy_(values["kernel"].permute(3, 2, 0, 1))
      else:
        layer.weight.copy_(values["scale"])
      if layer.bias is not None:
        layer.bias.copy_(values["bias"])


def test_cyclegan_step_has_gens_losses_from_gens_weights():
  """Two steps of each from the same weights and batch: the same discriminator losses (before
  their update), generator losses (through the updated discriminators) and, in the second
  step, the losses after both updates. The pool is still filling, so it returns the new fakes."""
  sizes = _test_sizes("cyclegan_digits")
  config = load_config("cyclegan_digits", batch_size=2,
                       **{f"model.{k}": v for k, v in sizes.items()})
  fields = torch_reference.EXPERIMENTS["cyclegan_digits"].fields
  family, modules, optimizers, spec = _gen_side(config, fields)
  state = family.init_state(modules, optimizers, config, spec, jax.random.key(0))
  train_step = jax.jit(family.make_train_step(modules, optimizers, config))
  torch_modules = torch_reference.build("cyclegan_digits", **sizes, xla_padding=True)
  for name, module in torch_modules.items():
    copy_weights(state.modules[name].params, module)
  step, batch = torch_reference.make_train_step("cyclegan_digits", batch_size=2,
                                                modules=torch_modules)
  gen_batch = {name: jnp.asarray(x.numpy().transpose(0, 2, 3, 1)) for name, x in batch.items()}
  for i in range(2):
    state, gen_metrics = train_step(state, gen_batch, jax.random.key(i + 1))
    torch_metrics = step(batch)
    assert {"d_loss", "inverse_d_loss", "g_loss", "g_cycle"} <= set(torch_metrics)
    for name, value in torch_metrics.items():
      np.testing.assert_allclose(float(value), float(gen_metrics[name]), rtol=2e-4,
                                 err_msg=f"step {i}: {name}")
