"""Class-conditional DCGAN on scikit-learn's 8x8 digits (offline): one-hot labels appended to
the generator's noise, a projection discriminator (Miyato & Koyama 2018)."""
from gen import cli


def get_config():
  config = cli.load_config("dcgan_digits")
  with config.unlocked():
    config.model.update(dict(num_classes=10, conditioning="projection", spectral_norm=False))
  # dcgan_digits's training before its learning rate and dropout were retuned: what this
  # model's README row was measured with.
  config.model.dropout = 0.3
  config.optimizer.schedule = "constant"
  for module in ("generator", "discriminator"):
    config.optimizer[module].learning_rate = 2e-4
  return config
