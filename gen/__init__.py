"""gen: generative models (GANs, VAEs and their hybrids) in JAX/Flax, built for throughput."""


class UsageError(Exception):
  """Bad input from the user (config, data, workdir): the message names the problem and the fix."""
