"""IWAE on MNIST from tfds (Burda et al. 2016): vae_mnist's model trained on the
importance-weighted bound with K = 5 posterior samples per example, a tighter bound than the
ELBO that lets the posterior be less exact. Logged: `iwae` (the K = 5 bound, the negated
loss) and the ELBO; the evaluation's nll_iwae uses K = config.eval.iwae_samples."""
from gen import cli


def get_config():
  config = cli.load_config("vae_mnist")
  config.vae.update(dict(objective="iwae", iwae_samples=5))
  return config
