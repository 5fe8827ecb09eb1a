"""`gan_ring2d` with the hinge loss (Lim & Ye 2017; the SNGAN/BigGAN objective)."""
from gen import cli


def get_config():
  config = cli.load_config("gan_ring2d")
  config.gan.loss = "hinge"
  return config
