"""Conditional VAE on scikit-learn's 8x8 digits (offline): the one-hot label goes to the encoder
(beside its flattened features) and to the decoder (beside z), so z need only hold the style
(Sohn et al. 2015). `--mode=sample --labels=0,1,2` draws the digits asked for."""
import ml_collections

from gen.steps import vae


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 64  # Global, over all devices.
  config.num_steps = 3000
  config.log_every = 100
  config.sample_every = 500
  config.checkpoint_every = 1000
  config.eval_every = 1000
  config.keep_checkpoints = 3
  config.max_nonfinite_steps = 10  # Skipped non-finite steps in a row before the run stops.

  config.dataset = ml_collections.ConfigDict({"name": "digits", "split": "train"})
  config.model = ml_collections.ConfigDict({
      "name": "conv_vae",
      "dtype": "float32",  # "bfloat16" computes in bf16 (GPU/TPU); params stay float32.
      "latent_dim": 8,
      "features": (32, 64),
      # Or "gaussian" (fixed observation_std), "gaussian_learned" or "logistic" (8-bit).
      "likelihood": "bernoulli",
      "observation_std": 0.1,
      "num_classes": 10,
  })
  config.vae = vae.options()
  config.optimizer = ml_collections.ConfigDict(
      {"vae": {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999}})
  # Test-split likelihood given the labels, reconstructions, and samples of every class in
  # turn (label_accuracy: how often gen's digits classifier names the class asked for).
  config.eval = ml_collections.ConfigDict({
      "metrics": ("likelihood", "reconstruction", "classifier"), "split": "test",
      "num_samples": 10_000, "iwae_samples": 1000, "best_metric": "nll_iwae"})
  return config
