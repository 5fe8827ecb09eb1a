"""gen: generative models (GANs, VAEs and their hybrids) in JAX/Flax, built for throughput.

Importing gen changes nothing outside it: XLA's flag defaults are set by gen's entry points
(gen.main, gen.bench, the tests) through `gen.cli.set_xla_defaults`.
"""


class UsageError(Exception):
  """Bad input from the user (config, data, workdir): the message names the problem and the fix."""
