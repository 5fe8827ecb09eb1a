"""Train-step time with gen's convolutions lowered each way, alternated in one process.

  python benchmarks/conv_lowering.py [--experiments=dcgan_digits,dcgan_mnist,vae_mnist]
                                     [--repeats=2] [--steps=15]

gen/models/layers.py computes a convolution as one matrix product of the input's shifted
views where `_as_matrix_product` says so (at most MATMUL_MAX_OUT_PIXELS output pixels or
MATMUL_MAX_IN_CHANNELS input channels), else with XLA's convolution. This times each
experiment's step with XLA's convolutions everywhere ("xla"), with gen's rule ("rule"), and
with the pixel threshold at 64 ("pixels<=64"), with the channel threshold at 4, the rule
before CycleGAN's 3-channel images were measured ("channels<=4"), and prints the medians over
repeats.
"""
import argparse
import statistics

from gen import bench, cli
from gen.models import layers

SETTINGS = {"xla": (0, 0), "rule": (layers.MATMUL_MAX_OUT_PIXELS, layers.MATMUL_MAX_IN_CHANNELS),
            "pixels<=64": (64, layers.MATMUL_MAX_IN_CHANNELS),
            "channels<=4": (layers.MATMUL_MAX_OUT_PIXELS, 4)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--experiments", default="dcgan_digits,dcgan_mnist,vae_mnist")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--steps", type=int, default=15)
  args = parser.parse_args()
  cli.set_xla_defaults()
  times = {}
  for _ in range(args.repeats):
    for name in args.experiments.split(","):
      for label, (pixels, channels) in SETTINGS.items():
        layers.MATMUL_MAX_OUT_PIXELS, layers.MATMUL_MAX_IN_CHANNELS = pixels, channels
        result = bench.benchmark(cli.load_config(name), steps=args.steps)
        times.setdefault((name, label), []).append(result["step_ms"])
  print("| experiment | lowering | step ms (median) | runs |\n| --- | --- | ---: | --- |")
  for (name, label), values in times.items():
    print(f"| {name} | {label} | {statistics.median(values):.1f} | "
          f"{', '.join(f'{v:.1f}' for v in values)} |")


if __name__ == "__main__":
  main()
