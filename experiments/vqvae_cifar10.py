"""VQ-VAE (van den Oord et al. 2017) on CIFAR-10 from tfds (downloads on first use): the layers
of Sonnet's example (128 hidden, 2 residual blocks of 32, 512 codes of 64 dimensions on an 8x8
grid), EMA codebook (decay 0.99), commitment β 0.25."""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 128  # Global, over all devices.
  config.num_steps = 100_000
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
      "name": "vqvae",
      "dtype": "float32",  # "bfloat16" computes in bf16 (GPU/TPU); params, codebook stay float32.
      "hidden": 128,  # Width of the 3x3 and second strided convolutions; the first has half.
      "residual_blocks": 2,
      "residual_width": 32,
      "embedding_dim": 64,  # D, the codes' dimension.
      "num_codes": 512,  # K.
      "commitment_cost": 0.25,  # β.
      "decay": 0.99,  # The codebook's EMA decay γ.
      "epsilon": 1e-5,  # Laplace smoothing of the EMA cluster sizes.
      "restart_threshold": 0.0,  # > 0: codes whose EMA cluster size falls below it restart.
      "data_variance": 1.0,  # The MSE is divided by it: 1.0 is plain MSE in [-1, 1].
  })
  config.optimizer = ml_collections.ConfigDict(
      {"vqvae": {"learning_rate": 2e-4, "b1": 0.9, "b2": 0.999}})
  # PSNR and SSIM of test-split reconstructions. num_samples is for groups that sample
  # (--config.eval.metrics=reconstruction,inception): samples decode random codes.
  config.eval = ml_collections.ConfigDict({
      "metrics": ("reconstruction",), "split": "test", "num_samples": 10_000,
      "best_metric": "psnr"})
  return config
