"""CycleGAN: the generators' objective against NumPy, the history pool against a NumPy
replacement rule, the digits2styled data, the schedule, config checks, the evaluation groups
on known translations, and a run with a filled pool resumed bitwise."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from conftest import cycle_gan_images, load_config, mock_cycle_gan, override
from gen import UsageError, data, evaluate, experiment as experiment_lib, losses, sharding, train
from gen.families import adam, cyclegan, pix2pix

# One narrow residual block: compiling is most of this file's time.
TINY = {"batch_size": 8, "log_every": 1, "sample_every": 1000, "checkpoint_every": 1000,
        "eval_every": 1000, "model.generator_width": 4, "model.residual_blocks": 1,
        "model.discriminator_width": 4}


def tiny_config(**overrides):
  return override(load_config("cyclegan_digits"), {**TINY, **overrides})


@pytest.mark.parametrize("identity_weight", [0.5, 0.0])
def test_generator_loss_is_lsgan_plus_cycles_plus_identity(identity_weight):
  rng = np.random.default_rng(0)
  logits_b, logits_a = (rng.normal(size=(4, 3, 3)).astype(np.float32) * 2 for _ in range(2))
  a, b, cycled_a, cycled_b, same_a, same_b = (
      rng.uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32) for _ in range(6))
  outputs = {"cycled_a": cycled_a, "cycled_b": cycled_b, "same_a": same_a, "same_b": same_b}
  loss, parts = jax.jit(cyclegan.generator_loss, static_argnums=(5, 6, 7, 8))(
      logits_b, logits_a, outputs, a, b, losses.GAN_LOSSES["least_squares"][1], 10.0,
      identity_weight, 2.0)
  f64 = lambda x: x.astype(np.float64)
  lsgan = lambda l: 0.5 * ((f64(l) - 1.0)**2).sum() / l.size
  l1 = lambda x, y: np.abs(f64(x) - f64(y)).sum() / x.size
  expected = (2.0 * (lsgan(logits_b) + lsgan(logits_a))
              + 10.0 * (l1(cycled_a, a) + l1(cycled_b, b))
              + identity_weight * 10.0 * (l1(same_b, b) + l1(same_a, a)))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(parts["g_cycle"], l1(cycled_a, a), rtol=1e-5)
  np.testing.assert_allclose(parts["inverse_g_adversarial"], lsgan(logits_a), rtol=1e-5)
  assert ("g_identity" in parts) == bool(identity_weight)


def _pool_reference(pool, fakes, filled, coins, slots):
  """The replacement rule, row by row, written out."""
  pool, seen = pool.copy(), fakes.copy()
  size = pool.shape[1]
  for row in range(len(fakes)):
    if filled < size:
      pool[row, filled] = fakes[row]
    elif coins[row] < 0.5:
      seen[row] = pool[row, slots[row]]
      pool[row, slots[row]] = fakes[row]
  return seen, pool


def test_history_pool_follows_the_replacement_rule_row_by_row():
  rng = np.random.default_rng(0)
  rows, size = 4, 3
  pool = np.zeros((rows, size, 2, 2, 1), np.float32)
  query = jax.jit(cyclegan.query_pool)
  swapped = 0
  for step in range(12):
    fakes = rng.normal(size=(rows, 2, 2, 1)).astype(np.float32)
    coins, slots = rng.uniform(size=rows).astype(np.float32), rng.integers(0, size, rows)
    filled = min(step, size)
    seen, new_pool = query(pool, fakes, jnp.int32(filled), coins, jnp.asarray(slots, jnp.int32))
    expected_seen, expected_pool = _pool_reference(pool, fakes, filled, coins, slots)
    np.testing.assert_array_equal(seen, expected_seen)
    np.testing.assert_array_equal(new_pool, expected_pool)
    swapped += int((np.asarray(seen) != fakes).any(axis=(1, 2, 3)).sum())
    pool = np.asarray(new_pool)
  assert swapped > 5  # Old fakes were returned, not only new ones.


def test_pool_slots_share_the_papers_50_over_the_rows():
  assert cyclegan.pool_slots(50, 1) == 50  # The paper's single pool.
  assert cyclegan.pool_slots(50, 8) == 7 and cyclegan.pool_slots(50, 16) == 4


def _dilate(images):
  """A 3x3 maximum written out, the border extended."""
  padded = np.pad(images, ((0, 0), (1, 1), (1, 1)), mode="edge")
  h, w = images.shape[1:]
  return np.max([padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=0)


def test_digits2styled_pairs_test_digits_with_their_style_and_splits_train_in_two():
  test, originals = data.digits2styled("test"), data.digits("test")
  assert test.num_examples == 359 and test.num_classes == 10
  assert {n: (s.shape, s.dtype) for n, s in test.spec.items()} == {
      "input": ((32, 32, 3), np.float32), "x": ((32, 32, 3), np.float32), "label": ((), np.int32)}
  examples = test.read(np.arange(359))
  expected = originals.read(np.arange(359))
  np.testing.assert_array_equal(examples["label"], expected["label"])
  enlarged = np.asarray(jax.image.resize((expected["x"][..., 0] + 1) / 2, (359, 32, 32),
                                         "bilinear"), np.float64)
  np.testing.assert_allclose(examples["input"], np.repeat(enlarged[..., None] * 2 - 1, 3, -1),
                             atol=1e-5)
  styled = (data.STYLED_BACKGROUND + _dilate(enlarged)[..., None]
            * (data.STYLED_STROKE - data.STYLED_BACKGROUND))
  np.testing.assert_allclose(examples["x"], styled * 2 - 1, atol=1e-5)
  # Thicker strokes than any per-pixel colouring of a gives.
  stroke = lambda unit: unit > 0.5
  assert stroke(_dilate(enlarged)).sum() > 1.3 * stroke(enlarged).sum()
  # The style reads back as the digit, for the classifier.
  unstyled = data.undo_digit_style(data.to_unit_range(examples["x"]))
  assert np.abs(unstyled[..., 0] - enlarged).mean() < 0.02

  train_split = data.digits2styled("train")
  assert train_split.num_examples == 719
  rows = train_split.read(np.arange(719))
  digits = np.asarray(data.upsample_bilinear(data._digits_split("train")[0], 4))
  index_of = lambda images: {images[i].tobytes(): i for i in range(len(images))}
  a_index = index_of(np.ascontiguousarray(np.repeat(digits[..., None], 3, -1) * 2 - 1,
                                          np.float32))
  b_index = index_of(np.ascontiguousarray(data.digit_style(digits) * 2 - 1, np.float32))
  a_digits = {a_index[image.tobytes()] for image in rows["input"]}
  b_digits = {b_index[image.tobytes()] for image in rows["x"]}
  assert len(a_digits) == len(b_digits) == 719 and not a_digits & b_digits


def test_constant_then_linear_schedule_holds_for_half_the_run_then_decays_to_zero():
  config = tiny_config(num_steps=100)
  optimizer = adam(config, ["generator"])["generator"]
  params, grads = {"w": jnp.ones(3)}, {"w": jnp.asarray([1.0, -2.0, 0.5])}
  state = optimizer.init(params)
  for count, rate in [(0, 2e-4), (49, 2e-4), (50, 2e-4), (75, 1e-4), (100, 0.0)]:
    at = jax.tree.map(lambda s: jnp.asarray(count, s.dtype) if s.dtype == jnp.int32 else s, state)
    update, _ = optimizer.update(grads, at, params)
    reference, _ = optax.adam(rate, b1=0.5, b2=0.999).update(grads, at, params)
    np.testing.assert_allclose(update["w"], reference["w"], rtol=1e-6, atol=1e-12,
                               err_msg=str(count))


@pytest.mark.parametrize("overrides, message", [
    ({"gan.n_critic": 2}, r"config.gan.n_critic=2: CycleGAN trains each discriminator once"),
    ({"cyclegan.cycle_weight": -1.0}, r"config.cyclegan.cycle_weight=-1.0 must be in"),
    ({"cyclegan.adversarial_weight": 0.0}, "without the GAN loss"),
    ({"cyclegan.pool_size": -1}, r"config.cyclegan.pool_size=-1 must be an integer of at least 0"),
    ({"cyclegan.classifier_view_b": "sepia"}, r"classifier_view_b='sepia' must be one of"),
    ({"model.generator_norm": "batch"}, r"config.model.generator_norm='batch' must be one of"),
    ({"model.residual_blocks": -1}, r"residual_blocks=-1 must be an integer of at least 0"),
    ({"model.discriminator_norm": "batch", "gan.r1": 1.0}, "BatchNorm discriminator mixes"),
])
def test_bad_values_fail_before_compiling(overrides, message, single_device_mesh):
  with pytest.raises(UsageError, match=message):
    experiment_lib.build(tiny_config(**overrides), single_device_mesh)


def test_data_without_two_domains_fails_naming_the_fields(single_device_mesh):
  experiment = experiment_lib.build(tiny_config(**{"dataset.name": "digits"}),
                                    single_device_mesh)
  with pytest.raises(UsageError, match=r"CycleGAN needs two domains.*\['label', 'x'\]"):
    experiment.init_state()


def test_evaluation_of_true_translations(single_device_mesh, monkeypatch):
  """With G giving each test digit's true style and F its true digit, both translation
  directions and both cycles are perfect, and the classifier reads the outputs as well as
  the targets."""
  config = tiny_config()
  experiment = experiment_lib.build(config, single_device_mesh)
  split = data.load(config.dataset, "test")
  examples = split.read(np.arange(split.num_examples))
  truth = {"translate": (examples["input"], examples["x"]),
           "inverse_translate": (examples["x"], examples["input"])}

  def translator(experiment, function="translate"):
    sources, targets = truth[function]
    index = {image.tobytes(): i for i, image in enumerate(sources)}
    return lambda state, inputs, key: targets[[index[image.tobytes()] for image in inputs]]

  monkeypatch.setattr(pix2pix, "translator", translator)
  context = evaluate.EvalContext(experiment, split, None, None)
  results = {**cyclegan.eval_groups["translation"].make(context)(None),
             **cyclegan.eval_groups["cycle"].make(context)(None)}
  for prefix in ("", "inverse_"):
    assert results[prefix + "ssim"] == pytest.approx(1.0, abs=1e-6)
    assert results[prefix + "psnr"] == np.inf
    assert results[prefix + "target_label_accuracy"] > 0.97
    assert results[prefix + "label_preservation"] == results[prefix + "target_label_accuracy"]
    assert results[prefix + "cycle_l1"] == 0.0
    assert results[prefix + "cycle_ssim"] == pytest.approx(1.0, abs=1e-6)
  # Each output a digit of another label: the classifier sees it, in both directions.
  others = np.asarray([np.flatnonzero(examples["label"] != label)[0]
                       for label in examples["label"]])
  truth = {name: (sources, targets[others]) for name, (sources, targets) in truth.items()}
  results = cyclegan.eval_groups["translation"].make(context)(None)
  assert results["label_preservation"] < 0.05 and results["inverse_label_preservation"] < 0.05


def _block_features(images):
  """A cheap stand-in for the Inception: the grey means of 32x32 images' quadrants, [B, 4]
  (fewer dimensions than images, so that the covariances are not singular)."""
  b = images.shape[0]
  features = images.mean(axis=-1).reshape(b, 2, 16, 2, 16).mean(axis=(2, 4)).reshape(b, 4)
  return jax.nn.softmax(features), features


def _unpaired_experiment(mesh):
  config = override(load_config("cyclegan_horse2zebra"), {
      **TINY, "dataset.load_size": 36, "dataset.crop_size": 32, "model.discriminator_depth": 1})
  with mock_cycle_gan():
    return experiment_lib.build(config, mesh), data.load(config.dataset, "test")


def test_unpaired_evaluation_scores_each_domains_images_once(single_device_mesh, monkeypatch,
                                                             tmp_path):
  """cycle_gan's test split has 6 A and 8 B images (8 rows): FID of G(a) against the 8 B
  images and of F(b) against the 6 A images, with G brightening (a / 2 + 1/2) and F the
  identity, equals
  the Fréchet distance of those sets' features computed here; the cycles see each image
  once; the translation group, which needs true translations, refuses."""
  from gen import evaluate, metrics
  experiment, split = _unpaired_experiment(single_device_mesh)
  seen = []

  def translator(experiment, function="translate"):
    def translate(state, inputs, key):
      seen.append((function, len(inputs)))
      return inputs / 2 + 0.5 if function == "translate" else inputs
    return translate

  monkeypatch.setattr(pix2pix, "translator", translator)
  monkeypatch.setattr(evaluate, "inception_predict", lambda: _block_features)
  context = evaluate.EvalContext(experiment, split, str(tmp_path), None)
  results = cyclegan.eval_groups["translation_inception"].make(context)(None)
  domains = {d: np.stack([data.resize_image(e["image"], 32) for e in cycle_gan_images(
      f"test{d}")]) for d in "AB"}
  features = {d: np.asarray(_block_features(images)[1], np.float64)
              for d, images in domains.items()}
  fd = lambda x, y: metrics.frechet_distance(*metrics.gaussian_statistics(x),
                                             *metrics.gaussian_statistics(y))
  brightened = np.asarray(_block_features(domains["A"] / 2 + 0.5)[1], np.float64)
  np.testing.assert_allclose(results["fid"], fd(brightened, features["B"]), rtol=1e-6)
  np.testing.assert_allclose(results["inverse_fid"], fd(features["B"], features["A"]),
                             rtol=1e-6)
  assert results["fid"] > 5 * results["inverse_fid"] > 0  # The brightening is seen.
  assert {"inception_kid", "inverse_inception_precision"} <= set(results)
  assert "inception_score" not in results
  assert sorted(seen) == [("inverse_translate", 8), ("translate", 6)]
  assert (tmp_path / "eval" / "reference_cycle_gan_horse2zebra_x_8_inception_2015-12-05.npz"
          ).exists()
  seen.clear()
  cycles = cyclegan.eval_groups["cycle"].make(context)(None)
  for prefix, images in (("", domains["A"]), ("inverse_", domains["B"])):
    np.testing.assert_allclose(cycles[prefix + "cycle_l1"],
                               np.abs(np.float64(images) / 2 + 0.5 - images).mean(), rtol=1e-6)
  assert sorted(seen) == [("inverse_translate", 6), ("inverse_translate", 8),
                          ("translate", 6), ("translate", 8)]
  with pytest.raises(UsageError, match="translation group scores translations against their "
                                       "true targets, which cycle_gan/horse2zebra, unpaired"):
    cyclegan.eval_groups["translation"].make(context)
  with pytest.raises(UsageError, match="pix2pix learns from pairs"):
    pix2pix.batch_spec(experiment.config, split)


def test_inception_groups_without_weights_fail_before_the_first_step(tmp_path, monkeypatch,
                                                                     single_device_mesh):
  from gen import inception
  monkeypatch.setattr(inception, "default_weights_path", lambda: tmp_path / "missing.pth")
  config = tiny_config(num_steps=10_000, eval_every=5_000,
                       **{"eval.metrics": ("translation_inception", "cycle")})
  with pytest.raises(UsageError, match=r"(?s)pt_inception-2015-12-05.*curl -L -o"):
    train.train(config, str(tmp_path / "run"), single_device_mesh)
  assert not (tmp_path / "run" / "metrics.jsonl").exists()


def _leaves(state):
  leaves = jax.tree.leaves(jax.device_get(state))
  return [jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
          for x in leaves]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """tiny cyclegan_digits with 8 pool slots over 8 rows (one each: full after the first step,
  so later steps swap), trained 3 steps and resumed to 5, and trained 5 straight."""
  workdir = tmp_path_factory.mktemp("cyclegan")
  mesh = sharding.make_mesh(jax.devices()[:1])
  # A constant rate: the paper's schedule depends on num_steps, which the two runs differ in.
  config = lambda steps: tiny_config(num_steps=steps, sample_every=5, **{
      "cyclegan.pool_size": 8, "optimizer.schedule": "constant"})
  first = jax.device_get(train.train(config(3), str(workdir / "resumed"), mesh))
  resumed = train.train(config(5), str(workdir / "resumed"), mesh)
  straight = train.train(config(5), str(workdir / "straight"), mesh)
  yield config(5), workdir, mesh, first, resumed, straight


def test_resume_with_a_filled_pool_is_bitwise_equal_to_an_uninterrupted_run(runs):
  _, _, _, first, resumed, straight = runs
  pool = np.asarray(first.family_state[sharding.PER_ROW]["pool_b"])
  assert pool.shape == (8, 1, 32, 32, 3) and (np.abs(pool).reshape(8, -1).max(1) > 0).all()
  assert int(resumed.step) == int(straight.step) == 5
  assert int(straight.family_state["pool_filled"]) == 1
  for a, b in zip(_leaves(resumed), _leaves(straight)):
    np.testing.assert_array_equal(a, b)
  # The pool changed after the resume: the comparison covers the swaps.
  assert np.abs(np.asarray(straight.family_state[sharding.PER_ROW]["pool_b"]) - pool).max() > 0


def test_snapshots_show_both_cycles_and_sampling_translates_either_way(runs, tmp_path):
  config, workdir, mesh, _, _, straight = runs
  grid = np.asarray(Image.open(workdir / "straight" / "samples" / "step_5.png").convert("RGB"))
  assert grid.shape[:2] == (8 * 33 + 1, 12 * 33 + 1)  # 8 rows of 2 sextets of 32x32 images.
  first = data.digits2styled("train").read(np.arange(1))
  cell = lambda column: grid[1:33, 1 + 33 * column:33 * (column + 1)]
  unit = lambda image: np.round((image + 1) * 127.5)
  np.testing.assert_allclose(cell(0), unit(first["input"][0]), atol=1)
  np.testing.assert_allclose(cell(3), unit(first["x"][0]), atol=1)
  samples = experiment_lib.sample(config, str(workdir / "straight"), 4, str(tmp_path / "s.npz"),
                                  mesh)
  test = data.digits2styled("test").read(np.arange(4))
  translate = cyclegan.make_functions(experiment_lib.build(config, mesh).models, config)
  expected = jax.jit(translate["translate"])(straight, test["input"], None)
  np.testing.assert_allclose(samples["samples"], (np.asarray(expected) + 1) / 2, atol=1e-5)
  np.testing.assert_allclose(samples["targets"], (test["x"] + 1) / 2)
  inverse = experiment_lib.sample(config, str(workdir / "straight"), 4, None, mesh, inverse=True)
  expected = jax.jit(translate["inverse_translate"])(straight, test["x"], None)
  np.testing.assert_allclose(inverse["samples"], (np.asarray(expected) + 1) / 2, atol=1e-5)
  np.testing.assert_allclose(inverse["inputs"], (test["x"] + 1) / 2)
  np.testing.assert_allclose(inverse["targets"], (test["input"] + 1) / 2)


def test_reflect_conv_is_a_convolution_of_the_reflected_image():
  from gen.models.layers import ReflectConv
  x = jax.random.normal(jax.random.key(0), (2, 6, 5, 3))
  layer = ReflectConv(4, (3, 3))
  variables = layer.init(jax.random.key(1), x)
  y = np.asarray(layer.apply(variables, x), np.float64)
  kernel = np.asarray(variables["params"]["kernel"], np.float64)
  padded = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  expected = sum(np.einsum("bhwc,co->bhwo", padded[:, i:i + 6, j:j + 5], kernel[i, j])
                 for i in range(3) for j in range(3)) + np.asarray(variables["params"]["bias"])
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_the_resnet_generator_keeps_the_image_size_with_the_papers_layers():
  from gen.models import cyclegan as cyclegan_model
  config = tiny_config(**{"model.residual_blocks": 9, "model.generator_width": 64})
  modules = cyclegan_model.build(config.model, (32, 32, 3))
  assert set(modules) == set(cyclegan.MODULES)
  generator = modules["generator"]
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  out, variables = jax.eval_shape(lambda x: generator.init_with_output(jax.random.key(0), x), x)
  assert out.shape == (2, 32, 32, 3)
  kernels = {jax.tree_util.keystr(path): leaf.shape for path, leaf in
             jax.tree_util.tree_leaves_with_path(variables["params"]) if path[-1].key == "kernel"}
  shapes = sorted(kernels.values())
  # c7s1-64, d128, d256, 9 blocks of two 3x3 256->256, u128, u64, c7s1-3.
  assert shapes.count((3, 3, 256, 256)) == 18 and (7, 7, 3, 64) in shapes
  assert (7, 7, 64, 3) in shapes and (3, 3, 64, 128) in shapes and (3, 3, 128, 256) in shapes
  assert len(shapes) == 18 + 6
