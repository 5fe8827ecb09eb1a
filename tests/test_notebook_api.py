"""The public helpers the notebooks use: configs by name, models registered from outside gen,
and a VAE's encoder and decoder at chosen codes."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config, override, tiny

from gen import UsageError, cli, experiment as experiment_lib, models as models_lib, train
from gen.families import vae as vae_steps


def test_load_config_by_name_is_the_experiment_file_locked():
  config = cli.load_config("dcgan_digits")
  assert config.to_dict() == load_config("dcgan_digits").to_dict()
  with pytest.raises(AttributeError):
    config.num_stepz = 3  # Locked: a mistyped key fails at once.
  with pytest.raises(UsageError, match="dcgan_digits"):
    cli.load_config("dcgan_digitz")  # The message lists the experiments there are.


def test_load_config_with_test_overrides_sets_the_files_dict(tmp_path, monkeypatch):
  (tmp_path / "small.py").write_text(
      "import ml_collections\n"
      "TEST_OVERRIDES = {'model.width': 4, 'num_steps': 2}\n"
      "def get_config():\n"
      "  return ml_collections.ConfigDict({'num_steps': 100, 'model': {'width': 64, 'depth': 3}})\n")
  (tmp_path / "plain.py").write_text((tmp_path / "small.py").read_text().replace(
      "TEST_OVERRIDES", "OTHER"))
  (tmp_path / "typo.py").write_text((tmp_path / "small.py").read_text().replace(
      "'model.width'", "'model.widht'"))
  monkeypatch.setattr(cli, "experiments_dir", lambda: str(tmp_path))

  assert cli.load_config("small").to_dict() == {"num_steps": 100, "model": {"width": 64,
                                                                             "depth": 3}}
  config = cli.load_config("small", test_overrides=True)
  assert config.to_dict() == {"num_steps": 2, "model": {"width": 4, "depth": 3}}
  with pytest.raises(AttributeError):
    config.num_stepz = 3  # Still locked.
  assert cli.load_config("plain", test_overrides=True).to_dict() == cli.load_config(
      "plain").to_dict()
  with pytest.raises(KeyError, match="widht"):
    cli.load_config("typo", test_overrides=True)  # A key the config lacks fails.


class _Generator(nn.Module):
  @nn.compact
  def __call__(self, z, labels=None, train=True):
    return jnp.tanh(nn.Dense(64)(z)).reshape(z.shape[0], 8, 8, 1)


class _Discriminator(nn.Module):
  @nn.compact
  def __call__(self, x, labels=None, train=True):
    return nn.Dense(1)(x.reshape(x.shape[0], -1))[:, 0], None


@pytest.fixture
def registry(monkeypatch):
  """The model registry, restored after the test."""
  monkeypatch.setattr(models_lib, "_REGISTERED", {})


def test_a_registered_model_trains_in_the_loop(registry, tmp_path, single_device_mesh):
  built = []

  def build(model_config, shape):
    built.append(tuple(shape))
    return {"generator": _Generator(), "discriminator": _Discriminator()}

  models_lib.register("linear_gan", build, "gan")
  config = override(cli.experiment_module("dcgan_digits").plain_config(), {
      "model.name": "linear_gan", "num_steps": 2, "batch_size": 16, "log_every": 1,
      "sample_every": 2, "checkpoint_every": 2})
  state = train.train(config, str(tmp_path), single_device_mesh)

  assert built and built[0] == (8, 8, 1)
  assert int(state.step) == 2
  assert state.params["generator"]["Dense_0"]["kernel"].shape == (config.model.latent_dim, 64)
  assert (tmp_path / "samples" / "step_2.png").exists()


def test_register_refuses_gen_models_and_unknown_families(registry, single_device_mesh):
  with pytest.raises(ValueError, match="one of gen's own"):
    models_lib.register("dcgan", lambda config, shape: {}, "gan")
  assert "dcgan" not in models_lib._REGISTERED
  models_lib.register("mine", lambda config, shape: {}, "diffusion")
  config = override(load_config("dcgan_digits"), {"model.name": "mine"})
  with pytest.raises(UsageError, match="Unknown family 'diffusion'"):
    experiment_lib.build(config, single_device_mesh)


def test_vae_decode_of_the_encoded_mean_is_the_reconstruction(single_device_mesh):
  config = tiny(load_config("vae_digits"), **{"model.latent_dim": 2})
  experiment = experiment_lib.build(config, single_device_mesh)
  state = experiment.init_state()
  x = experiment.dataset.read(np.arange(6))["x"]
  encode = experiment.jit(vae_steps.make_encode(experiment.models, config))
  decode = experiment.jit(vae_steps.make_decode(experiment.models, config))

  mean, log_var = encode(state, x)
  assert mean.shape == log_var.shape == (6, 2)
  reconstruction = experiment.jit(vae_steps.make_reconstruct(experiment.models, config))(state, x)
  np.testing.assert_allclose(decode(state, mean), reconstruction, atol=1e-6)
  # And prior samples are decoded codes drawn from N(0, I).
  key = jax.random.key(3)
  generated = experiment.jit(vae_steps.make_generate(experiment.models, config))(
      state, key, jnp.zeros((6,), jnp.int32))
  np.testing.assert_allclose(decode(state, jax.random.normal(key, (6, 2))), generated, atol=1e-6)
