"""DCGAN on scikit-learn's 8x8 digits, with a categorical latent code: the default experiment,
offline, minutes on 2 CPU cores.

The generator is given a 10-way one-hot code beside its noise, kept informative by InfoGAN's
Q head on the discriminator (Chen et al. 2016): without labels, it gives each kind of digit
its own region of the latent space, and fewer samples fall between two digits' shapes (the
README's "How dcgan_digits's default was chosen"). `plain_config` is the DCGAN without it.
"""
import ml_collections

from gen import cli
from gen.families import gan, infogan

# The training cdcgan_digits and infogan_digits were measured with, before R1, the longer run
# and the retuned learning rate and dropout: they set these keys on plain_config().
FIRST_TRAINING = {"num_steps": 10_000, "checkpoint_every": 2500, "eval_every": 2500,
                  "gan.r1": 0.0, "model.dropout": 0.3, "optimizer.schedule": "constant",
                  "optimizer.generator.learning_rate": 2e-4,
                  "optimizer.discriminator.learning_rate": 2e-4}


def get_config():
  # Chosen by measurement (the README's "How dcgan_digits's default was chosen"): the
  # categorical code at λ 0.2 lifted precision from 0.73 to 0.85 at 10,000 steps; the
  # generator at half the discriminator's learning rate kept recall; noise at temperature
  # 1.05 when sampling trades some of that precision back for recall.
  config = infogan.configure(plain_config(), latent_dim=32, continuous=0)
  config.infogan.weight = 0.2
  config.optimizer.generator.learning_rate = 2e-4
  config.gan.temperature = 1.05
  # Half the plain DCGAN's steps, with lazy R1 (every 4th step, scaled by 4, as StyleGAN2):
  # the 10 minutes on a 2-core AVX2 CPU (the README's "How dcgan_digits's default was chosen").
  config.num_steps = 10_000
  config.gan.r1_every = 4
  config.checkpoint_every = config.eval_every = 2500
  return config


def plain_config():
  """The DCGAN alone: z ~ N(0, I) into the generator, no codes."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 64  # Global, over all devices.
  # R1 and 20,000 steps: chosen by measurement (the README's "How dcgan_digits's default was
  # chosen"); about 9 minutes on 2 idle Zen 5 cores.
  config.num_steps = 20_000
  config.log_every = 100
  config.sample_every = 2000
  config.checkpoint_every = 4000
  config.eval_every = 4000
  config.keep_checkpoints = 3
  config.max_nonfinite_steps = 10  # Skipped non-finite steps in a row before the run stops.
  config.profile_steps = 0  # > 0: trace this many steps into <workdir>/plugins/profile/.
  config.steps_per_call = 0  # Train steps per compiled call; 0: 1 on CPUs, 10 on GPUs/TPUs.

  config.dataset = ml_collections.ConfigDict({"name": "digits", "split": "train"})
  config.model = ml_collections.ConfigDict({
      "name": "dcgan",
      "dtype": "float32",  # "bfloat16" computes in bf16 (GPU/TPU); params stay float32.
      "latent_dim": 32,
      # Twice the widths of the first version and an EMA of the generator: chosen by measurement
      # (the README's "How dcgan_digits's default was chosen").
      "generator_features": (256, 128, 64),
      "discriminator_features": (64, 128),
      "dropout": 0.1,  # The discriminator's; 0.3 (DCGAN's usual) trained slower here.
  })
  config.gan = gan.options(ema_decay=0.999, r1=1.0)
  adam = {"learning_rate": 4e-4, "b1": 0.5, "b2": 0.999}
  config.optimizer = ml_collections.ConfigDict({
      "generator": dict(adam), "discriminator": dict(adam), "schedule": "linear"})
  # Against the test split, with gen's digits classifier (python -m gen.classifiers digits).
  config.eval = ml_collections.ConfigDict({
      "metrics": ("classifier",), "split": "test", "num_samples": 10_000, "best_metric": "fd"})
  return config


def first_training_config():
  """plain_config() with FIRST_TRAINING's keys: what cdcgan_digits and infogan_digits build on."""
  return cli.set_keys(plain_config(), FIRST_TRAINING)
