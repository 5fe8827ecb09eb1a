"""Layers shared by gen's models.

Every model builds its transposed convolutions through `ConvTranspose` here, so that the
XLA:CPU slow path of its weight gradient (about 10x the forward pass for stride 2) can
be replaced in this one place.
"""
import functools

import flax.linen as nn

ConvTranspose = functools.partial(nn.ConvTranspose, padding="SAME")
