"""CycleGAN (Zhu et al. 2017) on monet2photo: cyclegan_horse2zebra's setup (the paper's at
256x256) on tensorflow-datasets' `cycle_gan/monet2photo` (1,072 Monet paintings as A, 6,287
photos as B; 121 and 751 in the test split; downloads on first use). Scored by the FID of
G's paintings-made-photos against the test photos and of F's photos-made-Monets against the
test paintings, and by the cycles."""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "experiments.cyclegan_horse2zebra",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "cyclegan_horse2zebra.py"))
_horse2zebra = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_horse2zebra)

TEST_OVERRIDES = _horse2zebra.TEST_OVERRIDES
EPOCH_STEPS = 6287  # max(|trainA|, |trainB|) rows: the photos.


def get_config():
  return _horse2zebra.get_config("cycle_gan/monet2photo", EPOCH_STEPS)
