"""β-VAE on MNIST from tfds (Higgins et al. 2017): the KL weighted by β = 4, which trades
reconstruction for a posterior closer to the factorised prior; vae_mnist's model otherwise.
The logged `elbo` is still the true ELBO (β = 1); `loss` is the β-weighted objective."""
from gen import cli


def get_config():
  config = cli.load_config("vae_mnist")
  config.vae.beta = 4.0
  return config
