"""Convolutional VAE on MNIST from tfds (Bernoulli likelihood on intensities; downloads on first use)."""
import ml_collections

from gen.families import vae


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 128  # Global, over all devices.
  config.num_steps = 20_000
  config.log_every = 100
  config.sample_every = 1000
  config.checkpoint_every = 2000
  config.eval_every = 5000
  config.keep_checkpoints = 3
  config.max_nonfinite_steps = 10  # Skipped non-finite steps in a row before the run stops.
  config.profile_steps = 0  # > 0: trace this many steps into <workdir>/plugins/profile/.
  config.steps_per_call = 0  # Train steps per compiled call; 0: 1 on CPUs, 10 on GPUs/TPUs.

  config.dataset = ml_collections.ConfigDict(
      {"name": "mnist", "split": "train", "data_dir": ml_collections.FieldReference(None, str)})
  config.model = ml_collections.ConfigDict({
      "name": "conv_vae",
      "dtype": "float32",  # "bfloat16" computes in bf16 (GPU/TPU); params stay float32.
      "latent_dim": 16,
      "features": (32, 64),
      # Or "gaussian" (fixed observation_std), "gaussian_learned" or "logistic" (8-bit).
      "likelihood": "bernoulli",
      "observation_std": 0.1,
      "num_classes": 0,  # 10: a conditional VAE (labels to encoder and decoder).
  })
  config.vae = vae.options()  # The plain ELBO: β 1, no KL warm-up, no free bits.
  config.optimizer = ml_collections.ConfigDict(
      {"vae": {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999}})
  # Test-split likelihood (IWAE bound, K samples), reconstructions and samples.
  config.eval = ml_collections.ConfigDict({
      "metrics": ("likelihood", "reconstruction", "classifier"), "split": "test",
      "num_samples": 10_000, "iwae_samples": 1000, "best_metric": "nll_iwae"})
  return config
