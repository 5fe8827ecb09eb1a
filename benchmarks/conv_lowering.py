"""Train-step time with gen's convolutions lowered each way, alternated in one process.

  python benchmarks/conv_lowering.py [--experiments=dcgan_digits,dcgan_mnist,vae_mnist]
                                     [--lowerings=xla,rule,...] [--repeats=2] [--steps=15]

gen/models/layers.py computes a convolution as one matrix product of the input's shifted
views where `_as_matrix_product` says so (at most MATMUL_MAX_OUT_PIXELS output pixels or
MATMUL_MAX_IN_CHANNELS input channels), stride-1 convolutions with at most
TAP_MAX_OUT_CHANNELS output channels as `_output_tap_conv`, else with XLA's convolution.
This times each experiment's step with XLA's convolutions everywhere ("xla"), with gen's
rule ("rule"), with the rule but no output-tap convolutions ("no-taps"), with the pixel
threshold at 64 ("pixels<=64"), and with the channel threshold at 4, the rule before
CycleGAN's 3-channel images were measured ("channels<=4"), and prints the medians over
repeats.
"""
import argparse
import statistics

from gen import bench, cli
from gen.models import layers

_RULE = (layers.MATMUL_MAX_OUT_PIXELS, layers.MATMUL_MAX_IN_CHANNELS, layers.TAP_MAX_OUT_CHANNELS)
SETTINGS = {"xla": (0, 0, 0), "rule": _RULE, "no-taps": (*_RULE[:2], 0),
            "pixels<=64": (64, *_RULE[1:]), "channels<=4": (_RULE[0], 4, _RULE[2])}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--experiments", default="dcgan_digits,dcgan_mnist,vae_mnist")
  parser.add_argument("--lowerings", default=",".join(SETTINGS), help="Of: " + ", ".join(SETTINGS))
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--steps", type=int, default=15)
  args = parser.parse_args()
  lowerings = args.lowerings.split(",")
  if unknown := set(lowerings) - set(SETTINGS):
    parser.error(f"unknown lowerings {sorted(unknown)}; choose from {', '.join(SETTINGS)}")
  cli.set_xla_defaults()
  times = {}
  for _ in range(args.repeats):
    for name in args.experiments.split(","):
      for label in lowerings:
        (layers.MATMUL_MAX_OUT_PIXELS, layers.MATMUL_MAX_IN_CHANNELS,
         layers.TAP_MAX_OUT_CHANNELS) = SETTINGS[label]
        result = bench.benchmark(cli.load_config(name), steps=args.steps)
        times.setdefault((name, label), []).append(result["step_ms"])
  print("| experiment | lowering | step ms (median) | runs |\n| --- | --- | ---: | --- |")
  for (name, label), values in times.items():
    print(f"| {name} | {label} | {statistics.median(values):.1f} | "
          f"{', '.join(f'{v:.1f}' for v in values)} |")


if __name__ == "__main__":
  main()
