"""Conditional VAE on scikit-learn's 8x8 digits (offline): `vae_digits` with the one-hot label
given to the encoder (beside its flattened features) and to the decoder (beside z), so z need
only hold the style (Sohn et al. 2015). `--mode=sample --labels=0,1,2` draws the digits asked
for, and the evaluation adds label_accuracy: how often gen's digits classifier names the class
asked for."""
from gen import cli


def get_config():
  config = cli.load_config("vae_digits")
  config.model.num_classes = 10
  return config
