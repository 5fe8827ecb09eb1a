"""Class-conditional DCGAN on scikit-learn's 8x8 digits (offline): one-hot labels appended to
the generator's noise, a projection discriminator (Miyato & Koyama 2018)."""
import ml_collections

from gen.steps import gan


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 64  # Global, over all devices.
  config.num_steps = 10_000
  config.log_every = 100
  config.sample_every = 1000
  config.checkpoint_every = 2500
  config.eval_every = 2500
  config.keep_checkpoints = 3
  config.max_nonfinite_steps = 10  # Skipped non-finite steps in a row before the run stops.

  config.dataset = ml_collections.ConfigDict({"name": "digits", "split": "train"})
  config.model = ml_collections.ConfigDict({
      "name": "dcgan",
      "dtype": "float32",  # "bfloat16" computes in bf16 (GPU/TPU); params stay float32.
      "latent_dim": 32,
      "generator_features": (128, 64, 32),
      "discriminator_features": (32, 64),
      "num_classes": 10,
      "conditioning": "projection",  # Or "acgan".
      "spectral_norm": False,
  })
  config.gan = gan.options()
  adam = {"learning_rate": 2e-4, "b1": 0.5, "b2": 0.999}
  config.optimizer = ml_collections.ConfigDict({"generator": adam, "discriminator": adam})
  # label_accuracy: how often gen's digits classifier names the class asked for.
  config.eval = ml_collections.ConfigDict({
      "metrics": ("classifier",), "split": "test", "num_samples": 10_000, "best_metric": "fd"})
  return config
