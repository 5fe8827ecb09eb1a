"""PyTorch eager re-implementations of gen's dcgan_mnist, vae_mnist and cyclegan_digits train
steps, for timing.

Layer for layer and parameter for parameter the same networks as gen.models.dcgan,
gen.models.conv_vae and gen.models.cyclegan with the widths of the experiments' configs, and
the same work per step as gen.families.gan, gen.families.vae and gen.families.cyclegan, so
that images/s can be compared on the same CPU. Data is synthetic (a fixed random batch of the
experiment's fields and shapes, in [-1, 1]).

  python benchmarks/torch_reference.py dcgan_mnist [--batch_size=128] [--steps=30]
                                                  [--channels_last] [--json]

Known differences that change neither parameter counts nor FLOPs: tensors are NCHW unless
--channels_last; the initialisers are PyTorch's; torch's symmetric paddings place 'SAME'
windows of strided layers one pixel off XLA's asymmetric ones, and its transposed
convolutions flip the kernel where flax's do not; BatchNorm's running variance is unbiased
in torch, biased in flax. CycleGAN's modules take `xla_padding=True` to pad as XLA does
(an explicit pad before the strided convolutions, a crop after the transposed ones), with
which tests/test_torch_reference.py checks that they compute gen's losses from gen's weights;
timing uses PyTorch's own paddings.
"""
import argparse
import dataclasses
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# Stride-1 4x4 convolutions (the PatchGAN's last two) pad as XLA's "SAME" does, one pixel
# before and two after, which torch does with a padded copy and says so on every call.
warnings.filterwarnings("ignore", message="Using padding='same' with even kernel")


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


def _instance_norm(width):
  """flax.linen.InstanceNorm(epsilon=1e-5): per example and channel, with a scale and bias."""
  return nn.InstanceNorm2d(width, eps=1e-5, affine=True)


class _Crop(nn.Module):
  """x[..., :height, :width]: XLA's "SAME" window of a stride-2 transposed convolution."""

  def __init__(self, height, width):
    super().__init__()
    self.height, self.width = height, width

  def forward(self, x):
    return x[..., :self.height, :self.width]


def _down(width_in, width, xla_padding):
  """A stride-2 3x3 convolution without bias, output half the input (gen.models.layers.Conv)."""
  if xla_padding:  # XLA's "SAME" pads 0 before and 1 after; torch's padding=1 is 1 and 1.
    return [nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(width_in, width, 3, stride=2, bias=False)]
  return [nn.Conv2d(width_in, width, 3, stride=2, padding=1, bias=False)]


def _up(width_in, width, size, xla_padding):
  """A stride-2 3x3 transposed convolution without bias to `size` (gen's ConvTranspose)."""
  if xla_padding:  # flax's unflipped kernel is torch's flipped one, one pixel later.
    return [nn.ConvTranspose2d(width_in, width, 3, stride=2, bias=False), _Crop(size, size)]
  return [nn.ConvTranspose2d(width_in, width, 3, stride=2, padding=1, output_padding=1,
                             bias=False)]


class ResidualBlock(nn.Module):
  """x + norm(conv(relu(norm(conv(x))))), reflection-padded 3x3 convolutions
  (gen.models.cyclegan.ResidualBlock)."""

  def __init__(self, width):
    super().__init__()
    self.layers = nn.Sequential(
        nn.Conv2d(width, width, 3, padding=1, padding_mode="reflect", bias=False),
        _instance_norm(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, padding_mode="reflect", bias=False),
        _instance_norm(width))

  def forward(self, x):
    return x + self.layers(x)


class ResnetGenerator(nn.Module):
  """images [B, C, H, W] in [-1, 1] -> images [B, C, H, W] in [-1, 1]
  (gen.models.cyclegan.ResnetGenerator with instance norm)."""

  def __init__(self, width=16, residual_blocks=6, channels=3, size=32, xla_padding=False):
    super().__init__()
    layers = [nn.Conv2d(channels, width, 7, padding=3, padding_mode="reflect", bias=False),
              _instance_norm(width), nn.ReLU()]
    for factor_in, factor in ((1, 2), (2, 4)):
      layers += [*_down(width * factor_in, width * factor, xla_padding),
                 _instance_norm(width * factor), nn.ReLU()]
    layers += [ResidualBlock(width * 4) for _ in range(residual_blocks)]
    for factor_in, factor, side in ((4, 2, size // 2), (2, 1, size)):
      layers += [*_up(width * factor_in, width * factor, side, xla_padding),
                 _instance_norm(width * factor), nn.ReLU()]
    layers.append(nn.Conv2d(width, channels, 7, padding=3, padding_mode="reflect"))
    self.layers = nn.Sequential(*layers)

  def forward(self, x):
    return torch.tanh(self.layers(x))


class PatchGAN(nn.Module):
  """images [B, C, H, W] -> patch logits [B, H/2^depth, W/2^depth] (gen.models.pix2pix.PatchGAN
  with instance norm): `depth` stride-2 4x4 convolutions, a stride-1 one and the logit layer."""

  def __init__(self, features=(16, 32), channels=3, negative_slope=0.2):
    super().__init__()
    depth, layers, width_in = len(features) - 1, [], channels
    for level, width in enumerate(features):
      # Stride 2 on even sides: XLA's "SAME" pads 1 and 1, as padding=1 does.
      stride, padding = (2, 1) if level < depth else (1, "same")
      layers.append(nn.Conv2d(width_in, width, 4, stride, padding, bias=level == 0))
      if level:
        layers.append(_instance_norm(width))
      layers.append(nn.LeakyReLU(negative_slope))
      width_in = width
    layers.append(nn.Conv2d(width_in, 1, 4, padding="same"))
    self.layers = nn.Sequential(*layers)

  def forward(self, x):
    return self.layers(x)[:, 0]


def cyclegan_modules(generator_width=16, residual_blocks=6, discriminator_width=16,
                     discriminator_depth=1, channels=3, size=32, xla_padding=False):
  """experiments/cyclegan_digits.py's four modules (keyword arguments: its config.model's)."""
  generator = lambda: ResnetGenerator(generator_width, residual_blocks, channels, size,
                                      xla_padding)
  features = tuple(discriminator_width * min(2**i, 8) for i in range(discriminator_depth + 1))
  return {"generator": generator(), "inverse_generator": generator(),
          "discriminator": PatchGAN(features, channels),
          "inverse_discriminator": PatchGAN(features, channels)}


def build(experiment: str, **sizes) -> dict[str, nn.Module]:
  """The named modules of an experiment, keyed as gen.models.build keys them; `sizes`
  (keyword arguments of its builder) replace the experiment's."""
  if experiment not in EXPERIMENTS:
    raise ValueError(f"Unknown experiment {experiment!r}; known: {tuple(EXPERIMENTS)}.")
  return EXPERIMENTS[experiment].build(**sizes)


def parameter_count(experiment: str) -> dict[str, int]:
  """{module name: trainable parameters}, BatchNorm running statistics (buffers) excluded."""
  return {name: sum(p.numel() for p in module.parameters())
          for name, module in build(experiment).items()}


def _adam(module, lr, b1):
  return torch.optim.Adam(module.parameters(), lr=lr, betas=(b1, 0.999))


def _gan_step(modules, batch):
  """gen.families.gan's step: one generator pass; D's update; G's update through the updated D."""
  generator, discriminator = modules["generator"], modules["discriminator"]
  g_opt, d_opt = _adam(generator, 2e-4, 0.5), _adam(discriminator, 2e-4, 0.5)
  g_params = list(generator.parameters())
  latent_dim = generator.dense.in_features
  bce = F.binary_cross_entropy_with_logits

  def step(batch):
    real = batch["x"]
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


def _vae_step(modules, batch):
  """gen.families.vae's step: Adam on the negative ELBO (Bernoulli likelihood, analytic KL)."""
  vae = modules["vae"]
  opt = _adam(vae, 1e-3, 0.9)

  def step(batch):
    x = batch["x"]
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


class HistoryPool:
  """gen.families.cyclegan.query_pool's rule: each batch row r has S = ceil(pool_size / B)
  slots; until they are filled, each new fake is stored and returned; afterwards, with
  probability ½ a row returns one of its stored fakes, chosen uniformly, and stores the new
  one in its place, otherwise it returns the new one."""

  def __init__(self, pool_size, like):
    self.images = torch.zeros(like.shape[0], math.ceil(pool_size / like.shape[0]),
                              *like.shape[1:])
    self.filled = 0

  def query(self, fakes):
    rows, slots = self.images.shape[:2]
    if self.filled < slots:
      self.images[:, self.filled] = fakes
      self.filled += 1
      return fakes
    swap = torch.rand(rows) < 0.5
    slot = torch.randint(slots, (rows,))
    stored = self.images[torch.arange(rows), slot]  # A copy: the writes below leave it alone.
    self.images[torch.arange(rows)[swap], slot[swap]] = fakes[swap]
    return torch.where(swap[:, None, None, None], stored, fakes)


# experiments/cyclegan_digits.py's config.cyclegan (tests/test_torch_reference.py checks them).
CYCLEGAN = {"cycle_weight": 10.0, "identity_weight": 0.5, "adversarial_weight": 2.0,
            "pool_size": 50}


def _cyclegan_step(modules, batch, cycle_weight=CYCLEGAN["cycle_weight"],
                   identity_weight=CYCLEGAN["identity_weight"],
                   adversarial_weight=CYCLEGAN["adversarial_weight"],
                   pool_size=CYCLEGAN["pool_size"]):
  """gen.families.cyclegan's step: one pass of each generator chain, G(a), F(b), F(G(a)),
  G(F(b)) and the identities G(b), F(a); each discriminator's update on its real images and
  its pool's fakes in one call; both generators' update on the least-squares, cycle and
  identity losses through the updated discriminators."""
  g, f = modules["generator"], modules["inverse_generator"]
  d_b, d_a = modules["discriminator"], modules["inverse_discriminator"]
  opts = {name: _adam(module, 2e-4, 0.5) for name, module in modules.items()}
  generator_params = [*g.parameters(), *f.parameters()]
  pools = {"b": HistoryPool(pool_size, batch["x"]), "a": HistoryPool(pool_size, batch["input"])}
  l1 = lambda x, y: (x - y).abs().mean()
  g_adversarial = lambda logits: 0.5 * ((logits - 1.0)**2).mean()  # gen's ½(D − 1)².

  def step(batch):
    a, b = batch["input"], batch["x"]
    fake_b, fake_a = g(a), f(b)
    cycled_a, cycled_b = f(fake_b), g(fake_a)
    metrics = {}
    for prefix, name, d, real, fake, pool in (("", "discriminator", d_b, b, fake_b, pools["b"]),
                                              ("inverse_", "inverse_discriminator", d_a, a,
                                               fake_a, pools["a"])):
      real_logits, fake_logits = d(torch.cat([real, pool.query(fake.detach())])).chunk(2)
      d_loss = 0.5 * ((real_logits - 1.0)**2).mean() + 0.5 * (fake_logits**2).mean()
      opts[name].zero_grad(set_to_none=True)
      d_loss.backward()
      opts[name].step()
      metrics[f"{prefix}d_loss"] = d_loss.detach()
    parts = {"g_adversarial": g_adversarial(d_b(fake_b)),
             "inverse_g_adversarial": g_adversarial(d_a(fake_a)),
             "g_cycle": l1(cycled_a, a), "inverse_g_cycle": l1(cycled_b, b)}
    g_loss = (adversarial_weight * (parts["g_adversarial"] + parts["inverse_g_adversarial"])
              + cycle_weight * (parts["g_cycle"] + parts["inverse_g_cycle"]))
    if identity_weight:
      parts.update(g_identity=l1(g(b), b), inverse_g_identity=l1(f(a), a))
      g_loss = g_loss + identity_weight * cycle_weight * (parts["g_identity"]
                                                          + parts["inverse_g_identity"])
    for name in ("generator", "inverse_generator"):
      opts[name].zero_grad(set_to_none=True)
    # Only the generators' gradients, as gen's step (which differentiates by the fakes).
    g_loss.backward(inputs=generator_params)
    for name in ("generator", "inverse_generator"):
      opts[name].step()
    return {**metrics, "g_loss": g_loss.detach(), **{k: v.detach() for k, v in parts.items()}}

  return step


@dataclasses.dataclass(frozen=True)
class Reference:
  """An experiment's reference: its batch, its modules and its train step."""
  fields: dict  # {batch field: one example's shape [C, H, W]}, as the family's batch spec.
  batch_size: int  # The experiment's config.batch_size.
  build: Callable[..., dict]  # (**sizes) -> {module name: nn.Module}.
  make_step: Callable  # (modules, batch) -> step(batch) -> {metric: tensor}, in place.


MNIST, DIGITS32 = (1, 28, 28), (3, 32, 32)
EXPERIMENTS = {
    "dcgan_mnist": Reference({"x": MNIST}, 128,
                             lambda: {"generator": Generator(), "discriminator": Discriminator()},
                             _gan_step),
    "vae_mnist": Reference({"x": MNIST}, 128, lambda: {"vae": VAE()}, _vae_step),
    "cyclegan_digits": Reference({"input": DIGITS32, "x": DIGITS32}, 8, cyclegan_modules,
                                 _cyclegan_step),
}


def make_train_step(experiment: str, batch_size: int, seed: int = 0,
                    channels_last: bool = False, modules=None):
  """(step, batch): step(batch) runs one train step in place and returns its losses; batch
  is a fixed synthetic {field: images [B, C, H, W] in [-1, 1]}. `modules` (default: freshly
  built ones) lets a test start from given weights.

  channels_last stores images NHWC, as gen does (about 15% faster on a 2-core x86 CPU);
  the default is PyTorch's usual NCHW.
  """
  torch.manual_seed(seed)
  reference = EXPERIMENTS[experiment]
  modules = build(experiment) if modules is None else modules
  batch = {field: torch.rand(batch_size, *shape) * 2.0 - 1.0
           for field, shape in reference.fields.items()}
  if channels_last:
    modules = {name: m.to(memory_format=torch.channels_last) for name, m in modules.items()}
    batch = {field: x.contiguous(memory_format=torch.channels_last) for field, x in batch.items()}
  for module in modules.values():
    module.train()
  return reference.make_step(modules, batch), batch


def time_train_step(experiment: str, batch_size: int | None = None, steps: int = 30,
                    warmup: int = 5, channels_last: bool = False) -> dict:
  """The median wall time of `steps` train steps after `warmup` untimed ones (batch_size
  None: the experiment's)."""
  batch_size = batch_size or EXPERIMENTS[experiment].batch_size
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
  parser.add_argument("--batch_size", type=int, default=None,
                      help="default: the experiment's config.batch_size")
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--channels_last", action="store_true", help="NHWC memory format")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  parser.add_argument("--profile", type=int, default=0,
                      help="instead: print the N most expensive PyTorch operators of a step")
  args = parser.parse_args(argv)
  batch_size = args.batch_size or EXPERIMENTS[args.experiment].batch_size
  if args.profile:
    print(profile_table(args.experiment, batch_size, args.steps, args.profile,
                        args.channels_last))
    return
  result = time_train_step(args.experiment, batch_size, args.steps, args.warmup,
                           args.channels_last)
  result["parameters"] = sum(parameter_count(args.experiment).values())
  if args.json:
    print(json.dumps(result))
  else:
    layout = "NHWC" if args.channels_last else "NCHW"
    print(f"{args.experiment} (PyTorch {result['torch']}, {layout}, {result['threads']} threads): "
          f"batch {batch_size}, {result['step_ms']:.1f} ms/step, "
          f"{result['images_per_sec']:.0f} images/s")


if __name__ == "__main__":
  main()
