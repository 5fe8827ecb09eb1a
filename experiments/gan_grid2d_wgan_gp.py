"""`gan_grid2d` with WGAN-GP (Gulrajani et al. 2017): the Wasserstein critic, gradient
penalty λ=0.1, 5 critic steps per generator step (each on its own batch of 256),
Adam(1e-4, 0.5, 0.9)."""
from gen import cli


def get_config():
  config = cli.load_config("gan_grid2d")
  config.batch_size = 256
  # λ=0.1 as in the WGAN-GP toy experiments (gan_toy.py); λ=10 collapses to the centre here.
  config.gan.update(dict(loss="wasserstein", gradient_penalty=0.1, n_critic=5))
  for module in ("generator", "discriminator"):
    config.optimizer[module].update(dict(learning_rate=1e-4, b2=0.9))
  return config
