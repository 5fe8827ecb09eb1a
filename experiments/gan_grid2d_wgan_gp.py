"""`gan_grid2d` with WGAN-GP (Gulrajani et al. 2017): the Wasserstein critic, gradient
penalty λ=0.1, 5 critic steps per generator step, Adam(1e-4, 0.5, 0.9)."""
import ml_collections

from gen.steps import gan


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 256  # Global, over all devices; each of the n_critic D steps gets its own.
  config.num_steps = 20_000
  config.log_every = 250
  config.sample_every = 2000
  config.checkpoint_every = 5000
  config.eval_every = 5000
  config.keep_checkpoints = 3
  config.max_nonfinite_steps = 10  # Skipped non-finite steps in a row before the run stops.

  config.dataset = ml_collections.ConfigDict({"name": "grid2d", "split": "train"})
  config.model = ml_collections.ConfigDict({
      "name": "mlp_gan",
      "dtype": "float32",  # "bfloat16" computes in bf16 (GPU/TPU); params stay float32.
      "latent_dim": 2,
      "hidden": (256, 256, 256, 256),
  })
  # λ=0.1 as in the WGAN-GP toy experiments (gan_toy.py); λ=10 collapses to the centre here.
  config.gan = gan.options(loss="wasserstein", gradient_penalty=0.1, n_critic=5,
                           ema_decay=0.999)
  adam = {"learning_rate": 1e-4, "b1": 0.5, "b2": 0.9}
  config.optimizer = ml_collections.ConfigDict({"generator": adam, "discriminator": adam})
  # The VEEGAN/PacGAN protocol: 2,500 samples, high quality within 3 std of a mode.
  config.eval = ml_collections.ConfigDict({
      "metrics": ("modes",), "split": "test", "num_samples": 2500, "best_metric": "high_quality"})
  return config
