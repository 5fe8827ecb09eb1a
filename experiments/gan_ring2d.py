"""MLP GAN on 8 Gaussians on a circle of radius 2 (std 0.02), the mode-collapse benchmark."""
import ml_collections

from gen.families import gan


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 256  # Global, over all devices.
  config.num_steps = 10_000
  config.log_every = 250
  config.sample_every = 2000
  config.checkpoint_every = 5000
  config.eval_every = 5000
  config.keep_checkpoints = 3
  config.max_nonfinite_steps = 10  # Skipped non-finite steps in a row before the run stops.
  config.profile_steps = 0  # > 0: trace this many steps into <workdir>/plugins/profile/.
  config.steps_per_call = 0  # Train steps per compiled call; 0: 1 on CPUs, 10 on GPUs/TPUs.

  config.dataset = ml_collections.ConfigDict({"name": "ring2d", "split": "train"})
  config.model = ml_collections.ConfigDict({
      "name": "mlp_gan",
      "dtype": "float32",  # "bfloat16" computes in bf16 (GPU/TPU); params stay float32.
      "latent_dim": 2,
      "hidden": (128, 128, 128),
  })
  config.gan = gan.options()
  adam = {"learning_rate": 2e-4, "b1": 0.5, "b2": 0.999}
  config.optimizer = ml_collections.ConfigDict(
      {"generator": dict(adam), "discriminator": dict(adam), "schedule": "constant"})
  # The VEEGAN/PacGAN protocol: 2,500 samples, high quality within 3 std of a mode.
  config.eval = ml_collections.ConfigDict({
      "metrics": ("modes",), "split": "test", "num_samples": 2500, "best_metric": "high_quality"})
  return config
