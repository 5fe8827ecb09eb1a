"""Per-layer timings behind gen/models/layers.py: flax's layers against gen's, on this machine.

  python benchmarks/layers.py

Prints forward, weight-gradient and input-gradient times (median of 7, ms) for the DCGAN-28
layers where XLA:CPU has slow paths, and the dropout mask's generation at once or in chunks.
"""
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen import cli
from gen.models.layers import Conv, ConvTranspose, Dropout

cli.set_xla_defaults()  # The XLA:CPU kernels gen's own programs run with.


def _median_ms(fn, *args) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(7):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def _layer_row(name, module, x):
  params = module.init(jax.random.key(1), x)
  loss = lambda p, x: jnp.sum(module.apply(p, x) ** 2)
  forward = _median_ms(jax.jit(module.apply), params, x)
  weight = _median_ms(jax.jit(jax.grad(loss, argnums=0)), params, x)
  inputs = _median_ms(jax.jit(jax.grad(loss, argnums=1)), params, x)
  print(f"| {name} | {forward:.1f} | {weight:.1f} | {inputs:.1f} |")


def main():
  print("| layer (batch) | forward ms | forward + weight grad ms | forward + input grad ms |")
  print("| --- | ---: | ---: | ---: |")
  x = jax.random.normal(jax.random.key(0), (128, 7, 7, 128))
  _layer_row("flax ConvTranspose 7->14, 128->64, 5x5 s2 (128)",
             nn.ConvTranspose(64, (5, 5), strides=(2, 2), padding="SAME", use_bias=False), x)
  _layer_row("gen ConvTranspose, same", ConvTranspose(64, (5, 5), strides=(2, 2), use_bias=False), x)
  x = jax.random.normal(jax.random.key(0), (256, 14, 14, 64))
  _layer_row("flax Conv 14->7, 64->128, 5x5 s2 (256)",
             nn.Conv(128, (5, 5), strides=(2, 2), padding="SAME"), x)
  _layer_row("gen Conv, same", Conv(128, (5, 5), strides=(2, 2)), x)

  x = jnp.ones((256, 14, 14, 64))
  for name, chunk in (("at once", x.size), ("in chunks of 2^20", 1 << 20)):
    layer = Dropout(0.3, chunk_elements=chunk)
    ms = _median_ms(jax.jit(lambda x: layer.apply({}, x, rngs={"dropout": jax.random.key(0)})), x)
    print(f"| dropout mask of 3.2M elements, {name} | {ms:.1f} | | |")


if __name__ == "__main__":
  main()
