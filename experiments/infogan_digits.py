"""InfoGAN (Chen et al. 2016) on scikit-learn's 8x8 digits (offline): dcgan_digits's layers,
a 10-way categorical and 2 continuous codes beside 16 noise dimensions, Q on the
discriminator's trunk. Its `codes` evaluation scores the categorical code as an unsupervised
digit classifier, and picks the best checkpoint."""
from gen import cli
from gen.families import infogan


def get_config():
  config = infogan.configure(cli.load_config("dcgan_digits"), latent_dim=16)
  config.eval.best_metric = "code_accuracy"
  return config
