"""gen: generative models (GANs, VAEs and their hybrids) in JAX/Flax, built for throughput."""
import os
from importlib import metadata


class UsageError(Exception):
  """Bad input from the user (config, data, workdir): the message names the problem and the fix."""


def _prefer_faster_cpu_kernels():
  """Turns off XLA:CPU's YNNPACK fusions unless XLA_FLAGS already sets them.

  On a 2-core x86 CPU they run gen's convolutions slower than XLA's other kernels: the
  dcgan_mnist step 16% and the vae_mnist step 35-40% (`python -m gen.bench`, with and
  without the flag). Only for the jaxlib versions this was measured on, because XLA aborts
  on a flag it does not know. It must be set before JAX starts a backend: importing gen
  does it.
  """
  flag = "--xla_cpu_experimental_ynn_fusion_type"
  try:
    version = metadata.version("jaxlib")
  except metadata.PackageNotFoundError:
    return
  current = os.environ.get("XLA_FLAGS", "")
  if version.startswith("0.10.") and flag not in current:
    os.environ["XLA_FLAGS"] = f"{current} {flag}=".strip()


_prefer_faster_cpu_kernels()
