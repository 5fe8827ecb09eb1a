"""pix2pix: the generator's objective against NumPy, the edges2digits data, the U-Net and
the PatchGAN's receptive field, DiffAugment alike on both images of a pair, config checks,
the translation metrics on known cases, and the family trained, snapshotted, evaluated and
sampled through the loop."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import load_config, override
from gen import (UsageError, classifiers, data, evaluate, experiment as experiment_lib, losses,
                 sharding, train)
from gen.families import gan as gan_family
from gen.families import pix2pix
from gen.models import pix2pix as pix2pix_model
from test_metrics import _ssim_reference

# Three U-Net levels rather than five (32 down to 4x4): compiling is most of this file's
# time, and tests/test_experiments.py trains the experiment's own five.
TINY = {"batch_size": 8, "log_every": 1, "sample_every": 1000, "checkpoint_every": 1000,
        "model.generator_width": 4, "model.discriminator_width": 4,
        "model.generator_depth": 3, "model.dropout_layers": 2}


def tiny_config(**overrides):
  return override(load_config("pix2pix_edges2digits"), {**TINY, **overrides})


def _softplus(x):
  return np.logaddexp(0.0, x)


# The generator losses of config.gan.loss, written out for patch logits l.
ADVERSARIAL = {
    "non_saturating": lambda l: _softplus(-l).mean(),  # -log σ(l)
    "hinge": lambda l: -l.mean(),
    "least_squares": lambda l: 0.5 * ((l - 1.0)**2).mean(),
}


@pytest.mark.parametrize("loss", sorted(ADVERSARIAL))
def test_generator_loss_is_adversarial_plus_lambda_l1(loss):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 3, 3)).astype(np.float32) * 3  # One per patch.
  outputs, targets = (rng.uniform(-1, 1, (4, 8, 8, 2)).astype(np.float32) for _ in range(2))
  total, parts = jax.jit(pix2pix.generator_loss, static_argnums=3)(
      logits, outputs, targets, losses.GAN_LOSSES[loss][1], 100.0, 0.5)
  adversarial = ADVERSARIAL[loss](logits.astype(np.float64))
  l1 = np.abs(targets.astype(np.float64) - outputs).sum() / targets.size
  np.testing.assert_allclose(parts["g_adversarial"], adversarial, rtol=1e-5)
  np.testing.assert_allclose(parts["g_l1"], l1, rtol=1e-5)
  np.testing.assert_allclose(total, 0.5 * adversarial + 100.0 * l1, rtol=1e-5)


def _sobel_edges(images, threshold):
  """Edges of images [N, H, W] in [0, 1], written out: the 3x3 Sobel kernels on the
  edge-padded image, their response divided by 8, the magnitude above `threshold`."""
  padded = np.pad(images, ((0, 0), (1, 1), (1, 1)), mode="edge")
  at = lambda di, dj: padded[:, 1 + di:padded.shape[1] - 1 + di, 1 + dj:padded.shape[2] - 1 + dj]
  gx = (at(-1, 1) + 2 * at(0, 1) + at(1, 1)) - (at(-1, -1) + 2 * at(0, -1) + at(1, -1))
  gy = (at(1, -1) + 2 * at(1, 0) + at(1, 1)) - (at(-1, -1) + 2 * at(-1, 0) + at(-1, 1))
  return np.hypot(gx, gy) / 8.0 > threshold


@pytest.mark.parametrize("split", ["train", "test"])
def test_edges2digits_pairs_each_digit_with_its_edge_map(split):
  pairs, digits = data.edges2digits(split), data.digits(split)
  assert pairs.num_examples == digits.num_examples == {"train": 1438, "test": 359}[split]
  assert pairs.num_classes == 10
  assert {name: (s.shape, s.dtype) for name, s in pairs.spec.items()} == {
      "input": ((32, 32, 1), np.float32), "x": ((32, 32, 1), np.float32), "label": ((), np.int32)}
  examples = pairs.read(np.arange(pairs.num_examples))
  originals = digits.read(np.arange(digits.num_examples))
  # The same split, in the same order: the same labels, and each target is its digit
  # enlarged bilinearly (jax.image.resize as the independent reference).
  np.testing.assert_array_equal(examples["label"], originals["label"])
  enlarged = jax.image.resize(originals["x"], (len(originals["x"]), 32, 32, 1), "bilinear")
  np.testing.assert_allclose(examples["x"], enlarged, atol=1e-5)
  assert examples["x"].min() == -1.0 and examples["x"].max() == 1.0
  # The input is a function of the target alone: its Sobel edges, as -1 and 1.
  edges = _sobel_edges((examples["x"][..., 0].astype(np.float64) + 1) / 2, data.EDGE_THRESHOLD)
  np.testing.assert_array_equal(examples["input"][..., 0], np.where(edges, 1.0, -1.0))
  assert 0.3 < edges.mean() < 0.7  # Outlines, neither empty nor everything.
  np.testing.assert_array_equal(pairs.read(np.array([5, 3]))["input"], examples["input"][[5, 3]])


def _model(name, config, shape):
  return pix2pix_model.build(config.model, shape)[name]


def test_the_unet_goes_down_to_1x1_and_its_dropout_is_its_noise():
  config = tiny_config(**{"model.generator_depth": 0, "model.dropout_layers": 3})
  for side, depth in ((32, 5), (64, 6)):
    unet = _model("generator", config, (side, side, 3))
    assert unet.features == tuple(4 * min(2**i, 8) for i in range(depth))
    shape = jax.eval_shape(lambda x: unet.init_with_output(jax.random.key(1), x, train=False)[0],
                           jax.ShapeDtypeStruct((2, side, side, 1), jnp.float32)).shape
    assert shape == (2, side, side, 3)
  unet = _model("generator", config, (32, 32, 3))

  def outputs(x):
    """G(x) without dropout and with it, each from two dropout keys."""
    variables = unet.init(jax.random.key(1), x, train=False)
    return [[unet.apply(variables, x, train=False, dropout_noise=noise,
                        rngs={"dropout": jax.random.key(k)}) for k in (2, 3)]
            for noise in (False, True)]

  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 1), minval=-1, maxval=1)
  (plain, plain_again), noisy = jax.jit(outputs)(x)
  assert plain.shape == (2, 32, 32, 3) and np.abs(plain).max() <= 1
  np.testing.assert_array_equal(plain_again, plain)
  assert np.abs(noisy[0] - noisy[1]).max() > 1e-3 and np.abs(noisy[0] - plain).max() > 1e-3


@pytest.mark.parametrize("depth, expected", [(1, 16), (2, 34), (3, 70)])
def test_patchgan_logits_see_a_square_of_the_receptive_field(depth, expected):
  assert pix2pix_model.receptive_field(depth) == expected  # 70: the paper's PatchGAN.
  side = 128 if depth == 3 else 64
  # Without normalisation: an InstanceNorm's statistics reach over the whole image.
  config = tiny_config(**{"model.discriminator_depth": depth, "model.discriminator_norm": "none"})
  patchgan = _model("discriminator", config, (side, side, 1))
  cells, centre = side // 2**depth, side // 2**depth // 2

  def centre_gradient(pairs):
    """(logits, the gradient of the centre patch's logit with respect to the pair)."""
    variables = patchgan.init(jax.random.key(1), pairs, None, train=False)
    logits = lambda p: patchgan.apply(variables, p, None, train=False)
    return logits(pairs), jax.grad(lambda p: logits(p)[0][0, centre, centre])(pairs)

  pairs = jax.random.normal(jax.random.key(0), (1, side, side, 2))
  (logits, class_logits), grad = jax.jit(centre_gradient)(pairs)
  assert logits.shape == (1, cells, cells) and class_logits is None
  rows, cols = np.nonzero(np.abs(np.asarray(grad[0])).sum(-1))
  assert rows.max() - rows.min() + 1 == expected and cols.max() - cols.min() + 1 == expected


class _Identity(nn.Module):
  """A "discriminator" whose logits are what it is given, to see the augmented pairs."""

  @nn.compact
  def __call__(self, x, labels=None, train=True):
    return x, None


def test_diffaugment_transforms_both_images_of_a_pair_alike():
  config = override(load_config("pix2pix_edges2digits"),
                    {"gan.diffaugment": "color,translation,cutout"})
  rng = np.random.default_rng(0)
  inputs, outputs = (jnp.asarray(rng.uniform(-1, 1, (16, 32, 32, 1)), jnp.float32)
                     for _ in range(2))
  discriminate = lambda channels: gan_family.make_discriminator(
      _Identity(), None, config, image_channels=channels)[0]

  def augmented(inputs, outputs, key):
    """What D sees of the pair, and of each image augmented alone with the same key."""
    seen, _, _ = discriminate((1, 1))({}, {}, pix2pix.pair(inputs, outputs), None, key)
    return seen, [discriminate(())({}, {}, images, None, key)[0] for images in (inputs, outputs)]

  seen, alone = jax.jit(augmented)(inputs, outputs,
                                                                 jax.random.key(3))
  np.testing.assert_allclose(seen[..., :1], alone[0], atol=1e-6)
  np.testing.assert_allclose(seen[..., 1:], alone[1], atol=1e-6)
  assert np.abs(alone[0] - inputs).max() > 0.1  # Something was done to them.


@pytest.mark.parametrize("overrides, message", [
    ({"gan.n_critic": 2}, r"config.gan.n_critic=2: pix2pix trains D once a step"),
    ({"pix2pix.l1_weight": -1.0}, r"config.pix2pix.l1_weight=-1.0 must be in \[0.0, inf\]"),
    ({"pix2pix.l1_weight": 0.0, "pix2pix.adversarial_weight": 0.0}, "no objective"),
    ({"model.generator_norm": "group"}, r"config.model.generator_norm='group' must be one of"),
    ({"model.discriminator_norm": "batch", "gan.r1": 1.0}, "BatchNorm discriminator mixes"),
    ({"model.generator_depth": 6}, r"generator_depth=6: .* divisible by 64, got \(32, 32\)"),
    ({"model.generator_depth": 0, "model.dropout_layers": 5},
     r"config.model.dropout_layers=5: the U-Net has 4 decoder"),
    ({"model.discriminator_depth": 0}, r"discriminator_depth=0 must be an integer of at least 1"),
    ({"pix2pix.adversarial_weight": -0.5}, r"config.pix2pix.adversarial_weight=-0.5 must be in"),
])
def test_bad_values_fail_before_compiling(overrides, message, single_device_mesh):
  with pytest.raises(UsageError, match=message):
    experiment_lib.build(tiny_config(**overrides), single_device_mesh)


def test_unpaired_data_fails_naming_the_fields(single_device_mesh):
  experiment = experiment_lib.build(tiny_config(**{"dataset.name": "digits"}), single_device_mesh)
  with pytest.raises(UsageError, match=r"pix2pix needs paired data.*digits has only \['label', 'x'\]"):
    experiment.init_state()


def _translation_group(config, mesh, monkeypatch, translate):
  """The `translation` group of `config`, its translations replaced by `translate(inputs)`."""
  experiment = experiment_lib.build(config, mesh)
  monkeypatch.setattr(pix2pix, "translator", lambda experiment, function="translate":
                      lambda state, inputs, key: translate(inputs))
  split = data.load(config.dataset, config.eval.split)
  context = evaluate.EvalContext(experiment, split, None, None)
  return pix2pix.eval_groups["translation"].make(context), split.read(np.arange(split.num_examples))


def test_translation_metrics_of_the_targets_themselves(single_device_mesh, monkeypatch):
  config = tiny_config()
  targets = data.edges2digits("test").read(np.arange(359))["x"]
  group, examples = _translation_group(config, single_device_mesh, monkeypatch,
                                       lambda inputs: targets[:len(inputs)])
  results = group(None)
  assert results["ssim"] == pytest.approx(1.0, abs=1e-6) and results["psnr"] == np.inf
  # gen's digits classifier on the 32x32 targets pooled 4x4 back to 8x8, computed here.
  pooled = examples["x"].reshape(-1, 8, 4, 8, 4, 1).mean(axis=(2, 4))
  predict = classifiers.make_predict(classifiers.load_or_train("digits"))
  probabilities = evaluate.features(predict, pooled, 500, single_device_mesh)["probabilities"]
  accuracy = float(np.mean(np.argmax(probabilities, -1) == examples["label"]))
  assert accuracy > 0.97
  assert results["label_preservation"] == pytest.approx(accuracy)
  assert results["target_label_accuracy"] == pytest.approx(accuracy)


def test_translation_metrics_of_noisy_and_wrong_outputs(single_device_mesh, monkeypatch):
  config = tiny_config()
  rng = np.random.default_rng(0)
  examples = data.edges2digits("test").read(np.arange(359))
  noisy = np.clip(examples["x"] + rng.normal(0, 0.3, examples["x"].shape), -1, 1).astype(np.float32)
  group, _ = _translation_group(config, single_device_mesh, monkeypatch, lambda inputs: noisy)
  results = group(None)
  real, fake = (examples["x"] + 1) / 2, (noisy + 1) / 2
  mse = ((real.astype(np.float64) - fake)**2).mean(axis=(1, 2, 3))
  assert results["psnr"] == pytest.approx(np.mean(10 * np.log10(1 / mse)), rel=1e-5)
  assert results["ssim"] == pytest.approx(np.mean(_ssim_reference(real, fake, 1.0, 11)), abs=1e-4)
  assert 0.2 < results["ssim"] < 0.9
  # Each output the digit of another label: nothing is preserved.
  others = np.stack([examples["x"][np.flatnonzero(examples["label"] != label)[0]]
                     for label in examples["label"]])
  group, _ = _translation_group(config, single_device_mesh, monkeypatch, lambda inputs: others)
  assert group(None)["label_preservation"] < 0.05


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """tiny pix2pix_edges2digits with EMA and DiffAugment, trained 2 steps with a snapshot and a
  `translation` evaluation at step 2."""
  workdir = tmp_path_factory.mktemp("pix2pix")
  config = tiny_config(num_steps=2, sample_every=2, eval_every=2, **{
      "gan.ema_decay": 0.9, "gan.diffaugment": "translation,cutout",
      "pix2pix.l1_weight": 10.0, "pix2pix.adversarial_weight": 0.5})
  mesh = sharding.make_mesh(jax.devices()[:1])
  state = train.train(config, str(workdir), mesh)
  yield config, workdir, mesh, state


def test_the_family_trains_and_evaluates_its_translations(trained):
  _, workdir, _, state = trained
  assert int(state.step) == 2
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  records = [r for r in records if "d_loss" in r]
  assert len(records) == 2 and all(np.isfinite(v) for r in records for v in r.values())
  for r in records:
    assert r["g_loss"] == pytest.approx(0.5 * r["g_adversarial"] + 10.0 * r["g_l1"], rel=1e-5)
  g = state.modules["generator"]
  assert g.batch_stats and max(np.abs(e - p).max() for e, p in zip(
      jax.tree.leaves(g.ema), jax.tree.leaves(g.params))) > 0
  evaluated = json.loads((workdir / "eval" / "2.json").read_text())
  assert 0 < evaluated["ssim"] < 1 and 0 < evaluated["psnr"] < 40
  assert 0 <= evaluated["label_preservation"] <= 1 and evaluated["target_label_accuracy"] > 0.97
  assert json.loads((workdir / "eval" / "best.json").read_text())["metric"] == "ssim"


def test_snapshots_show_input_output_and_target_side_by_side(trained):
  _, workdir, _, _ = trained
  grid = np.asarray(Image.open(workdir / "samples" / "step_2.png").convert("L"))
  # 8 rows of 4 triplets of 32x32 images, 1 pixel apart.
  assert grid.shape[:2] == (8 * 33 + 1, 12 * 33 + 1)
  first = data.edges2digits("train").read(np.arange(2))
  cell = lambda row, column: grid[1 + 33 * row:33 * (row + 1), 1 + 33 * column:33 * (column + 1)]
  unit = lambda image: np.round((image[..., 0] + 1) * 127.5)
  # Rounding may differ by one level between the grid's arithmetic and this.
  np.testing.assert_allclose(cell(0, 0), unit(first["input"][0]), atol=1)
  np.testing.assert_allclose(cell(0, 2), unit(first["x"][0]), atol=1)
  np.testing.assert_allclose(cell(0, 5), unit(first["x"][1]), atol=1)


def test_sampling_translates_the_test_split_or_given_inputs(trained, tmp_path):
  config, workdir, mesh, _ = trained
  samples = experiment_lib.sample(config, str(workdir), 20, str(tmp_path / "s.npz"), mesh)
  test = data.edges2digits("test").read(np.arange(20))
  assert samples["samples"].shape == (20, 32, 32, 1)
  assert 0 <= samples["samples"].min() and samples["samples"].max() <= 1
  np.testing.assert_allclose(samples["inputs"], (test["input"] + 1) / 2)
  np.testing.assert_allclose(samples["targets"], (test["x"] + 1) / 2)
  np.testing.assert_array_equal(samples["labels"], test["label"])
  # The written inputs, given back, translate the same way (the same dropout noise).
  again = experiment_lib.sample(config, str(workdir), 20, None, mesh, input=str(tmp_path / "s.npz"))
  np.testing.assert_allclose(again["samples"], samples["samples"], atol=1e-6)
  assert set(again) == {"samples", "inputs"}
  np.savez(tmp_path / "bad.npz", inputs=np.zeros((3, 8, 8, 1)))
  with pytest.raises(UsageError, match=r"the images are \(3, 8, 8, 1\); this model translates "
                                       r"\[N, 32, 32, 1\]"):
    experiment_lib.sample(config, str(workdir), 4, None, mesh, input=str(tmp_path / "bad.npz"))
