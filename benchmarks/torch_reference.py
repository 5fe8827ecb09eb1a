"""PyTorch eager re-implementations of gen's dcgan_mnist and vae_mnist train steps, for timing.

Layer for layer and parameter for parameter the same networks as gen.models.dcgan and
gen.models.conv_vae with the widths of experiments/dcgan_mnist.py and experiments/vae_mnist.py,
and the same work per step as gen.families.gan and gen.families.vae, so that images/s can be
compared on the same CPU. Data is synthetic (random MNIST-shaped batches in [-1, 1]).

  python benchmarks/torch_reference.py dcgan_mnist [--batch_size=128] [--steps=30]
                                                  [--channels_last] [--json]

Known differences that change neither parameter counts nor FLOPs: tensors are NCHW unless
--channels_last; the initialisers are PyTorch's; torch's symmetric paddings place 'SAME'
windows one pixel off XLA's asymmetric ones, and its transposed convolutions flip the
kernel where flax's do not; BatchNorm's running variance is unbiased in torch, biased in flax.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

EXPERIMENTS = ("dcgan_mnist", "vae_mnist")
SHAPE = (1, 28, 28)  # MNIST, [C, H, W].


class Generator(nn.Module):
  """z [B, latent] -> images [B, C, 4·base, 4·base] in [-1, 1] (gen.models.dcgan.Generator)."""

  def __init__(self, latent_dim=100, features=(256, 128, 64), base=7, channels=1,
               kernel_size=5, negative_slope=0.3):
    super().__init__()
    f0, f1, f2 = features
    k, pad = kernel_size, kernel_size // 2
    self.base, self.f0, self.negative_slope = base, f0, negative_slope
    # flax BatchNorm(momentum=0.99) keeps 0.99 of the old average; torch's momentum is the
    # weight of the new batch, so 0.01.
    bn1d = lambda n: nn.BatchNorm1d(n, eps=1e-3, momentum=0.01)
    bn2d = lambda n: nn.BatchNorm2d(n, eps=1e-3, momentum=0.01)
    self.dense = nn.Linear(latent_dim, base * base * f0, bias=False)
    self.bn0 = bn1d(base * base * f0)  # Over the dense features, before the reshape, as in gen.
    self.up1 = nn.ConvTranspose2d(f0, f1, k, stride=1, padding=pad, bias=False)
    self.bn1 = bn2d(f1)
    # output_padding=1 makes the stride-2 outputs exactly twice the input ('SAME').
    self.up2 = nn.ConvTranspose2d(f1, f2, k, stride=2, padding=pad, output_padding=1, bias=False)
    self.bn2 = bn2d(f2)
    self.up3 = nn.ConvTranspose2d(f2, channels, k, stride=2, padding=pad, output_padding=1,
                                  bias=False)

  def forward(self, z):
    act = lambda x: F.leaky_relu(x, self.negative_slope)
    x = act(self.bn0(self.dense(z))).reshape(z.shape[0], self.f0, self.base, self.base)
    x = act(self.bn1(self.up1(x)))
    x = act(self.bn2(self.up2(x)))
    return torch.tanh(self.up3(x))


class Discriminator(nn.Module):
  """images [B, C, H, W] -> logits [B] (gen.models.dcgan.Discriminator)."""

  def __init__(self, features=(64, 128), channels=1, size=28, kernel_size=5, negative_slope=0.3,
               dropout=0.3):
    super().__init__()
    layers, width_in = [], channels
    for width in features:
      layers += [nn.Conv2d(width_in, width, kernel_size, stride=2, padding=kernel_size // 2),
                 nn.LeakyReLU(negative_slope), nn.Dropout(dropout)]
      width_in, size = width, (size + 1) // 2
    self.features = nn.Sequential(*layers)
    self.dense = nn.Linear(size * size * width_in, 1)

  def forward(self, x):
    return self.dense(self.features(x).flatten(1))[:, 0]


class Encoder(nn.Module):
  """images [B, C, H, W] -> (mean, log_var) [B, latent] (gen.models.conv_vae.Encoder)."""

  def __init__(self, latent_dim=16, features=(32, 64), channels=1, size=28):
    super().__init__()
    layers, width_in = [], channels
    for width in features:
      layers += [nn.Conv2d(width_in, width, 3, stride=2, padding=1), nn.ReLU()]
      width_in, size = width, (size + 1) // 2
    self.features = nn.Sequential(*layers)
    self.hidden = nn.Linear(size * size * width_in, 256)
    self.out = nn.Linear(256, 2 * latent_dim)

  def forward(self, x):
    x = F.relu(self.hidden(self.features(x).flatten(1)))
    mean, log_var = self.out(x).chunk(2, dim=-1)
    return mean, log_var


class Decoder(nn.Module):
  """z [B, latent] -> Bernoulli logits [B, C, H, W] (gen.models.conv_vae.Decoder)."""

  def __init__(self, latent_dim=16, features=(64, 32), channels=1, size=28):
    super().__init__()
    self.f0, self.base = features[0], size // 2 ** len(features)
    self.hidden = nn.Linear(latent_dim, 256)
    self.seed = nn.Linear(256, self.base * self.base * features[0])
    layers, width_in = [], features[0]
    for width in features:
      layers += [nn.ConvTranspose2d(width_in, width, 3, stride=2, padding=1, output_padding=1),
                 nn.ReLU()]
      width_in = width
    layers.append(nn.Conv2d(width_in, channels, 3, padding=1))
    self.features = nn.Sequential(*layers)

  def forward(self, z):
    x = F.relu(self.seed(F.relu(self.hidden(z))))
    return self.features(x.reshape(z.shape[0], self.f0, self.base, self.base))


class VAE(nn.Module):
  """x [B, C, H, W] -> (logits, mean, log_var), z by reparameterisation (gen.models.conv_vae.VAE)."""

  def __init__(self, latent_dim=16, features=(32, 64), channels=1, size=28):
    super().__init__()
    self.encoder = Encoder(latent_dim, features, channels, size)
    self.decoder = Decoder(latent_dim, tuple(reversed(features)), channels, size)

  def forward(self, x):
    mean, log_var = self.encoder(x)
    z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
    return self.decoder(z), mean, log_var


def build(experiment: str) -> dict[str, nn.Module]:
  """The named modules of an experiment, keyed as gen.models.build keys them."""
  if experiment == "dcgan_mnist":
    return {"generator": Generator(), "discriminator": Discriminator()}
  if experiment == "vae_mnist":
    return {"vae": VAE()}
  raise ValueError(f"Unknown experiment {experiment!r}; known: {EXPERIMENTS}.")


def parameter_count(experiment: str) -> dict[str, int]:
  """{module name: trainable parameters}, BatchNorm running statistics (buffers) excluded."""
  return {name: sum(p.numel() for p in module.parameters())
          for name, module in build(experiment).items()}


def _gan_step(modules):
  """gen.families.gan's step: one generator pass; D's update; G's update through the updated D."""
  generator, discriminator = modules["generator"], modules["discriminator"]
  adam = lambda m: torch.optim.Adam(m.parameters(), lr=2e-4, betas=(0.5, 0.999))
  g_opt, d_opt = adam(generator), adam(discriminator)
  g_params = list(generator.parameters())
  latent_dim = generator.dense.in_features
  bce = F.binary_cross_entropy_with_logits

  def step(real):
    z = torch.randn(real.shape[0], latent_dim)
    fake = generator(z)
    # Real and fake in one discriminator call, as gen does.
    real_logits, fake_logits = discriminator(torch.cat([real, fake.detach()])).chunk(2)
    d_loss = (bce(real_logits, torch.ones_like(real_logits))
              + bce(fake_logits, torch.zeros_like(fake_logits)))
    d_opt.zero_grad(set_to_none=True)
    d_loss.backward()
    d_opt.step()
    # Same `fake`, no second generator pass. inputs= keeps autograd from computing D's
    # weight gradients, which gen's step does not compute either (it differentiates by `fake`).
    fake_logits = discriminator(fake)
    g_loss = bce(fake_logits, torch.ones_like(fake_logits))
    g_opt.zero_grad(set_to_none=True)
    g_loss.backward(inputs=g_params)
    g_opt.step()
    return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach()}

  return step


def _vae_step(modules):
  """gen.families.vae's step: Adam on the negative ELBO (Bernoulli likelihood, analytic KL)."""
  vae = modules["vae"]
  opt = torch.optim.Adam(vae.parameters(), lr=1e-3, betas=(0.9, 0.999))

  def step(x):
    target = (x + 1.0) * 0.5  # Model space [-1, 1] -> the likelihood's [0, 1].
    logits, mean, log_var = vae(x)
    log_likelihood = -F.binary_cross_entropy_with_logits(
        logits, target, reduction="none").flatten(1).sum(-1)
    kl = 0.5 * (torch.exp(log_var) + mean**2 - 1.0 - log_var).sum(-1)
    loss = -(log_likelihood - kl).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"loss": loss.detach(), "kl": kl.mean().detach()}

  return step


def make_train_step(experiment: str, batch_size: int, seed: int = 0,
                    channels_last: bool = False):
  """(step, batch): step(batch) runs one train step in place and returns its losses.

  channels_last stores images NHWC, as gen does (about 15% faster on a 2-core x86 CPU);
  the default is PyTorch's usual NCHW.
  """
  torch.manual_seed(seed)
  modules = build(experiment)
  batch = torch.rand(batch_size, *SHAPE) * 2.0 - 1.0  # Synthetic images in model space.
  if channels_last:
    modules = {name: m.to(memory_format=torch.channels_last) for name, m in modules.items()}
    batch = batch.contiguous(memory_format=torch.channels_last)
  for module in modules.values():
    module.train()
  make = _gan_step if experiment == "dcgan_mnist" else _vae_step
  return make(modules), batch


def time_train_step(experiment: str, batch_size: int = 128, steps: int = 30,
                    warmup: int = 5, channels_last: bool = False) -> dict:
  """The median wall time of `steps` train steps after `warmup` untimed ones."""
  step, batch = make_train_step(experiment, batch_size, channels_last=channels_last)
  for _ in range(warmup):
    step(batch)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step(batch)  # CPU eager: the step has finished when the call returns.
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  return {"experiment": experiment, "batch_size": batch_size, "steps": steps,
          "images_per_sec": batch_size / median, "step_ms": median * 1e3,
          "channels_last": channels_last, "threads": torch.get_num_threads(),
          "torch": torch.__version__}


def profile_table(experiment: str, batch_size: int, steps: int, top: int,
                  channels_last: bool = False) -> str:
  """torch.profiler's operator table (self CPU time per step) of `steps` train steps."""
  step, batch = make_train_step(experiment, batch_size, channels_last=channels_last)
  for _ in range(3):
    step(batch)
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
    for _ in range(steps):
      step(batch)
  events = sorted(profiler.key_averages(), key=lambda e: -e.self_cpu_time_total)
  total = sum(e.self_cpu_time_total for e in events)
  rows = ["| operator | calls / step | self ms / step | share |", "| --- | ---: | ---: | ---: |"]
  rows += [f"| {e.key} | {e.count / steps:g} | {e.self_cpu_time_total / 1e3 / steps:.2f} | "
           f"{100 * e.self_cpu_time_total / total:.1f}% |" for e in events[:top]]
  rows.append(f"| all {len(events)} operators | | {total / 1e3 / steps:.2f} | 100% |")
  return "\n".join(rows)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("experiment", choices=EXPERIMENTS)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--channels_last", action="store_true", help="NHWC memory format")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  parser.add_argument("--profile", type=int, default=0,
                      help="instead: print the N most expensive PyTorch operators of a step")
  args = parser.parse_args(argv)
  if args.profile:
    print(profile_table(args.experiment, args.batch_size, args.steps, args.profile,
                        args.channels_last))
    return
  result = time_train_step(args.experiment, args.batch_size, args.steps, args.warmup,
                           args.channels_last)
  result["parameters"] = sum(parameter_count(args.experiment).values())
  if args.json:
    print(json.dumps(result))
  else:
    layout = "NHWC" if args.channels_last else "NCHW"
    print(f"{args.experiment} (PyTorch {result['torch']}, {layout}, {result['threads']} threads): "
          f"batch {args.batch_size}, {result['step_ms']:.1f} ms/step, "
          f"{result['images_per_sec']:.0f} images/s")


if __name__ == "__main__":
  main()
