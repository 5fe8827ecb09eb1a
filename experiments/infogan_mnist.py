"""InfoGAN (Chen et al. 2016) on MNIST from tfds (downloads on first use): the paper's codes,
62 noise dimensions, a 10-way categorical and 2 continuous codes, on dcgan_mnist's layers;
Q on the discriminator's trunk."""
from gen import cli
from gen.families import infogan


def get_config():
  return infogan.configure(cli.load_config("dcgan_mnist"), latent_dim=62)
