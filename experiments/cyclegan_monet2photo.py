"""CycleGAN (Zhu et al. 2017) on monet2photo: cyclegan_horse2zebra's setup (the paper's at
256x256) on tensorflow-datasets' `cycle_gan/monet2photo` (1,072 Monet paintings as A, 6,287
photos as B; 121 and 751 in the test split; downloads on first use). Scored by the FID of
G's paintings-made-photos against the test photos and of F's photos-made-Monets against the
test paintings, and by the cycles."""
from gen import cli

TEST_OVERRIDES = cli.test_overrides("cyclegan_horse2zebra")
EPOCH_STEPS = 6287  # max(|trainA|, |trainB|) rows: the photos.


def get_config():
  config = cli.load_config("cyclegan_horse2zebra")
  config.dataset.name = "cycle_gan/monet2photo"
  # horse2zebra's schedule in epochs: 200 in all, samples and checkpoints every 5, evaluations
  # every 20.
  config.num_steps = 200 * EPOCH_STEPS
  config.sample_every = config.checkpoint_every = 5 * EPOCH_STEPS
  config.eval_every = 20 * EPOCH_STEPS
  return config
