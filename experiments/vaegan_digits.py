"""VAE-GAN on scikit-learn's 8x8 digits (offline): the seed design's hybrid objective, an
adversarial loss plus an L1 reconstruction loss (and the VAE's KL), with the GAN family's
DCGAN discriminator on reconstructions and prior samples (Larsen et al. 2016)."""
import ml_collections

from gen.families import gan, vaegan


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 64  # Global, over all devices.
  config.num_steps = 5000
  config.log_every = 100
  config.sample_every = 1000
  config.checkpoint_every = 2500
  config.eval_every = 2500
  config.keep_checkpoints = 3
  config.max_nonfinite_steps = 10  # Skipped non-finite steps in a row before the run stops.
  config.profile_steps = 0  # > 0: trace this many steps into <workdir>/plugins/profile/.
  config.steps_per_call = 0  # Train steps per compiled call; 0: 1 on CPUs, 10 on GPUs/TPUs.

  config.dataset = ml_collections.ConfigDict({"name": "digits", "split": "train"})
  config.model = ml_collections.ConfigDict({
      "name": "vaegan",
      "dtype": "float32",  # "bfloat16" computes in bf16 (GPU/TPU); params stay float32.
      "latent_dim": 16,
      "features": (32, 64),  # Encoder; the generator mirrors them.
      "discriminator_features": (32, 64),
  })
  config.gan = gan.options()
  config.vaegan = vaegan.options()
  adam = {"learning_rate": 2e-4, "b1": 0.5, "b2": 0.999}
  config.optimizer = ml_collections.ConfigDict(
      {"encoder": dict(adam), "generator": dict(adam), "discriminator": dict(adam)})
  # Reconstructions of the test split (PSNR/SSIM) and samples (gen's digits classifier).
  config.eval = ml_collections.ConfigDict({
      "metrics": ("reconstruction", "classifier"), "split": "test", "num_samples": 10_000,
      "best_metric": "psnr"})
  return config
