"""WGAN-GP on CIFAR-10 (Gulrajani et al. 2017): a DCGAN for 32x32 images, the Wasserstein
critic without dropout or normalisation, gradient penalty λ=10, 5 critic steps per generator
step, Adam(1e-4, 0.5, 0.9) with linear decay. CIFAR-10 comes through tfds."""
import ml_collections

from gen.families import gan


# tests/test_experiments.py trains every experiment two steps: five critic updates are five
# copies of the discriminator's update in the step, and this width takes seconds a step
# unoptimised; the test keeps 2 updates (the loop is the same for any number) and an eighth
# of the width (the same layers): 9 s in the suite's --durations against 44 at full
# width (`./launch.sh test --durations=0` from an empty compilation cache, a 2-core Zen 3).
TEST_OVERRIDES = {"gan.n_critic": 2, "model.generator_features": (64, 32, 16),
                  "model.discriminator_features": (16, 32, 64)}


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 64  # Global, over all devices; each of the n_critic D steps gets its own.
  config.num_steps = 100_000  # Generator steps.
  config.log_every = 100
  config.sample_every = 2000
  config.checkpoint_every = 5000
  config.eval_every = 10_000
  config.keep_checkpoints = 3
  config.max_nonfinite_steps = 10  # Skipped non-finite steps in a row before the run stops.
  config.profile_steps = 0  # > 0: trace this many steps into <workdir>/plugins/profile/.
  config.steps_per_call = 0  # Train steps per compiled call; 0: 1 on CPUs, 10 on GPUs/TPUs.

  config.dataset = ml_collections.ConfigDict({
      "name": "cifar10", "split": "train", "data_dir": ml_collections.FieldReference(None, str)})
  config.model = ml_collections.ConfigDict({
      "name": "dcgan",
      "dtype": "float32",  # "bfloat16" computes in bf16 (GPU/TPU); params stay float32.
      "latent_dim": 128,
      "generator_features": (512, 256, 128),  # 8x8 seed -> 32x32.
      "discriminator_features": (128, 256, 512),
      "dropout": 0.0,
  })
  config.gan = gan.options(loss="wasserstein", gradient_penalty=10.0, n_critic=5)
  adam = {"learning_rate": 1e-4, "b1": 0.5, "b2": 0.9}
  config.optimizer = ml_collections.ConfigDict(
      {"generator": dict(adam), "discriminator": dict(adam), "schedule": "linear"})
  # FID and IS against the test split (needs pytorch-fid's Inception weights, gen/inception.py).
  config.eval = ml_collections.ConfigDict({
      "metrics": ("inception",), "split": "test", "num_samples": 10_000, "best_metric": "fid"})
  return config
