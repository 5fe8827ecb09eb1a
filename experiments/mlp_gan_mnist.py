"""The vanilla GAN of the seed design on MNIST (Goodfellow et al. 2014): generator z ->
Dense 128 + LeakyReLU(0.01) -> 784 tanh, discriminator 784 -> Dense 128 + LeakyReLU(0.01) ->
1, non-saturating loss. MNIST comes through tfds (downloads on first use)."""
import ml_collections

from gen.families import gan


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 128  # Global, over all devices.
  config.num_steps = 30_000
  config.log_every = 100
  config.sample_every = 2000
  config.checkpoint_every = 5000
  config.eval_every = 10_000
  config.keep_checkpoints = 3
  config.max_nonfinite_steps = 10  # Skipped non-finite steps in a row before the run stops.
  config.profile_steps = 0  # > 0: trace this many steps into <workdir>/plugins/profile/.
  config.steps_per_call = 0  # Train steps per compiled call; 0: 1 on CPUs, 10 on GPUs/TPUs.

  config.dataset = ml_collections.ConfigDict({
      "name": "mnist", "split": "train", "data_dir": ml_collections.FieldReference(None, str)})
  config.model = ml_collections.ConfigDict({
      "name": "mlp_gan",
      "dtype": "float32",  # "bfloat16" computes in bf16 (GPU/TPU); params stay float32.
      "latent_dim": 100,
      "hidden": (128,),
      "negative_slope": 0.01,  # Discriminator.
      "generator_negative_slope": 0.01,
  })
  config.gan = gan.options()
  adam = {"learning_rate": 2e-4, "b1": 0.5, "b2": 0.999}
  config.optimizer = ml_collections.ConfigDict({"generator": dict(adam), "discriminator": dict(adam)})
  # Against the test split, with gen's MNIST classifier (python -m gen.classifiers mnist).
  config.eval = ml_collections.ConfigDict({
      "metrics": ("classifier",), "split": "test", "num_samples": 10_000, "best_metric": "fd"})
  return config
