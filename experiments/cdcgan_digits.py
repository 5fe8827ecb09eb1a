"""Class-conditional DCGAN on scikit-learn's 8x8 digits (offline): one-hot labels appended to
the generator's noise, a projection discriminator (Miyato & Koyama 2018)."""
from gen import cli


def get_config():
  # dcgan_digits's first training: what this model's README row was measured with.
  config = cli.experiment_module("dcgan_digits").first_training_config()
  with config.unlocked():
    config.model.update(dict(num_classes=10, conditioning="projection", spectral_norm=False))
  return config
