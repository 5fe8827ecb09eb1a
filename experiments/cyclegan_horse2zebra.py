"""CycleGAN (Zhu et al. 2017) on horse2zebra, the paper's setup at 256x256: tensorflow-
datasets' `cycle_gan/horse2zebra` (1,067 horses as A, 1,334 zebras as B; downloads on first
use), each training image resized to 286x286, cropped at random to 256x256 and flipped at
random (gen.data.cycle_gan); two ResNet generators of 9 residual blocks at width 64, two
70x70 PatchGANs (3 stride-2 layers), instance norm throughout, least-squares GAN loss with
cycle consistency λ = 10 each way and identity 0.5·λ, history pools of 50 fakes, batch 1,
Adam 2e-4 with b1 0.5 for 100 epochs and decayed linearly to 0 over 100 more. Scored on the
test split (120 horses, 140 zebras, resized to 256x256, no crop), where no true translation
exists: FID of G's zebras against the real test zebras and of F's horses against the horses
(needs pytorch-fid's Inception weights, gen/inception.py), and the cycles F(G(a)) ≈ a,
G(F(b)) ≈ b."""
import ml_collections

from gen import cli

# tests/test_experiments.py trains two steps (tfds mocked): cyclegan_digits's test model
# (one narrow residual block, 16x16 patches) on 32x32 crops of 36x36 images, the same
# program as that test's, which the tests' compilation cache then holds; the loop and the
# data path are the same at 256² (tests/test_pix2pix.py checks the 70x70 PatchGAN).
TEST_OVERRIDES = {"model.generator_width": 4, "model.residual_blocks": 1,
                  "model.discriminator_width": 4, "model.discriminator_depth": 1,
                  "dataset.load_size": 36, "dataset.crop_size": 32}

# An epoch is max(|trainA|, |trainB|) rows, as in the paper's code: 1,334 steps at batch 1.
EPOCH_STEPS = 1334


def get_config():
  # cyclegan_digits's objective, pools and optimizers (the paper's), at the paper's sizes.
  config = cli.load_config("cyclegan_digits")
  config.batch_size = 1  # Global, over all devices: the paper's.
  config.num_steps = 200 * EPOCH_STEPS  # 100 epochs at 2e-4, then 100 decaying to 0.
  config.sample_every = config.checkpoint_every = 5 * EPOCH_STEPS
  config.eval_every = 20 * EPOCH_STEPS
  config.model.generator_width = config.model.discriminator_width = 64
  config.model.residual_blocks = 9  # The paper's at 256x256.
  config.model.discriminator_depth = 3  # 70x70 patches.
  with config.unlocked():
    config.dataset = ml_collections.ConfigDict({
        "name": "cycle_gan/horse2zebra", "split": "train",
        "data_dir": ml_collections.FieldReference(None, str),
        "load_size": 286,  # Training images are resized to this, then cropped at random to
        "crop_size": 256,  # this; evaluation images are resized to crop_size.
    })
    config.eval = ml_collections.ConfigDict({
        "metrics": ("translation_inception", "cycle"), "split": "test", "best_metric": "fid"})
  return config
