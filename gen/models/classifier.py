"""Small image classifiers whose penultimate features stand in for Inception's on small data."""
from collections.abc import Sequence

import flax.linen as nn
import jax


class Classifier(nn.Module):
  """images [B, H, W, C] in [-1, 1] -> (logits [B, classes], features [B, feature_dim]).

  Two stride-2 convolution pairs, then a dense feature layer: for 8x8 digits and 28x28
  MNIST alike (a LeNet-sized network with ReLU and global structure kept by the dense
  layer). `features` (the penultimate layer) feed Fréchet distance, KID and precision/recall.
  """
  num_classes: int = 10
  widths: Sequence[int] = (32, 64)
  feature_dim: int = 128

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    for width in self.widths:
      x = nn.relu(nn.Conv(width, (3, 3), padding="SAME")(x))
      x = nn.relu(nn.Conv(width, (3, 3), strides=(2, 2), padding="SAME")(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.Dropout(0.3, deterministic=not train)(x)
    features = nn.relu(nn.Dense(self.feature_dim)(x))
    return nn.Dense(self.num_classes)(features), features
