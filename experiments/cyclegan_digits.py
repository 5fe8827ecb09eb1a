"""CycleGAN (Zhu et al. 2017) on digits2styled (offline): unpaired translation between
scikit-learn's digits enlarged to 32x32 (A) and other digits with dilated strokes in colour
(B). The paper's objective (least-squares GAN loss, cycle consistency λ = 10 each way,
identity 0.5·λ), history pools of 50 fakes, Adam 2e-4 with b1 0.5, constant for the first
half of the run and then decayed linearly to 0; a ResNet generator of 6 blocks at a quarter
of the paper's width and 16x16 PatchGANs, scaled down to the 32x32 images. Scored on the
test split, where each digit's true styled version is known: PSNR and SSIM of G(a) against
it (and of F(b) against a), label preservation by gen's digits classifier both ways, and the
cycles F(G(a)) ≈ a, G(F(b)) ≈ b."""
import ml_collections

from gen.families import cyclegan, gan

# tests/test_experiments.py trains two steps: one narrow residual block compiles in a
# fraction of the six's time.
TEST_OVERRIDES = {"model.generator_width": 4, "model.residual_blocks": 1,
                  "model.discriminator_width": 4}


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 8  # Global, over all devices (the paper's is 1).
  # 13.9 minutes on 2 CPU cores shared with other work (gen.results, seed 0): test SSIM 0.928
  # A→B and 0.937 B→A, label preservation 98.3% and 97.5%, cycle SSIM 0.962 and 0.939.
  config.num_steps = 1000
  config.log_every = 100
  config.sample_every = 500
  config.checkpoint_every = 500
  config.eval_every = 500
  config.keep_checkpoints = 3
  config.max_nonfinite_steps = 10  # Skipped non-finite steps in a row before the run stops.
  config.profile_steps = 0  # > 0: trace this many steps into <workdir>/plugins/profile/.
  config.steps_per_call = 0  # Train steps per compiled call; 0: 1 on CPUs, 10 on GPUs/TPUs.

  config.dataset = ml_collections.ConfigDict({"name": "digits2styled", "split": "train"})
  config.model = ml_collections.ConfigDict({
      "name": "cyclegan",
      "dtype": "float32",  # "bfloat16" computes in bf16 (GPU/TPU); params stay float32.
      "generator_width": 16,  # The paper's 64.
      "residual_blocks": 6,  # The paper's at 128x128 (9 at 256x256).
      "generator_norm": "instance",
      "discriminator_width": 16,
      "discriminator_depth": 1,  # 16x16 patches (3: the paper's 70x70 at 256²).
      "discriminator_norm": "instance",
      "spectral_norm": False,
  })
  config.gan = gan.options(loss="least_squares")
  # gen's least-squares generator loss is ½(D − 1)²; 2 restores the paper's (D − 1)².
  config.cyclegan = cyclegan.options(adversarial_weight=2.0)
  adam = {"learning_rate": 2e-4, "b1": 0.5, "b2": 0.999}
  config.optimizer = ml_collections.ConfigDict({
      "schedule": "constant_then_linear",
      **{name: dict(adam) for name in cyclegan.MODULES}})
  config.eval = ml_collections.ConfigDict({
      "metrics": ("translation", "cycle"), "split": "test", "classifier": "digits",
      "best_metric": "ssim"})
  return config
