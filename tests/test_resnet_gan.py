"""The SNGAN ResNet (Miyato et al. 2018, Table 4): shapes, parameter counts, spectral norm."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen.models import resnet_gan as resnet

B = 2  # Tiny batches and, where the test allows, narrow widths: the suite runs on 2 CPU cores.


def _images(shape=(B, 32, 32, 3), seed=0):
  return jax.random.uniform(jax.random.key(seed), shape, minval=-1.0, maxval=1.0)


def _num_params(variables) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("num_classes", [0, 10])
def test_generator_shapes_and_range(num_classes):
  model = resnet.Generator(width=16, num_classes=num_classes)
  z = jax.random.normal(jax.random.key(0), (B, 128))
  labels = jnp.array([3, 7]) if num_classes else None
  variables = model.init(jax.random.key(1), z, labels)
  images, updates = model.apply(variables, z, labels, mutable=["batch_stats"])
  assert images.shape == (B, 32, 32, 3) and images.dtype == jnp.float32
  assert np.all(np.abs(np.asarray(images)) <= 1.0) and np.std(np.asarray(images)) > 0
  # Training mode moves the BatchNorm statistics; evaluation uses them and returns the same shape.
  assert "batch_stats" in updates
  evaluated = model.apply({**variables, **updates}, z, labels, train=False)
  assert evaluated.shape == (B, 32, 32, 3) and np.all(np.isfinite(np.asarray(evaluated)))


def test_generator_base_sets_the_resolution():
  model = resnet.Generator(width=8, base=2, channels=1)
  z = jnp.ones((B, 4))
  out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), z)[0])
  assert out.shape == (B, 16, 16, 1)


def test_conditional_generator_uses_labels_in_every_block():
  model = resnet.Generator(width=8, num_classes=4)
  z = jnp.tile(jax.random.normal(jax.random.key(0), (1, 16)), (B, 1))  # Same z twice.
  labels = jnp.array([0, 1])
  variables = model.init(jax.random.key(1), z, labels)
  params = flax.traverse_util.flatten_dict(variables["params"])
  embeddings = [k for k in params if k[-1] == "embedding"]
  assert len(embeddings) == 3 * 2 * 2  # 3 blocks x 2 BatchNorms x (scale, offset).
  assert all(params[k].shape == (4, 8) for k in embeddings)
  # At init every class has scale 1, offset 0; randomised, the two labels must differ.
  params = {k: (jax.random.normal(jax.random.key(i), v.shape) if k[-1] == "embedding"
                else v) for i, (k, v) in enumerate(params.items())}
  variables = {**variables, "params": flax.traverse_util.unflatten_dict(params)}
  images, _ = model.apply(variables, z, labels, mutable=["batch_stats"])
  assert not np.allclose(images[0], images[1], atol=1e-3)
  with pytest.raises(ValueError):
    model.apply(variables, z, None, mutable=["batch_stats"])


def test_discriminator_unconditional():
  model = resnet.Discriminator(width=16)
  x = _images()
  variables = model.init(jax.random.key(0), x)
  (logits, class_logits), _ = model.apply(variables, x, mutable=["batch_stats"])
  assert logits.shape == (B,) and logits.dtype == jnp.float32 and class_logits is None
  assert logits[0] != logits[1]


def test_discriminator_projection_depends_on_labels():
  model = resnet.Discriminator(width=16, num_classes=10, conditioning="projection")
  x = jnp.tile(_images((1, 32, 32, 3)), (B, 1, 1, 1))  # Same image twice.
  variables = model.init(jax.random.key(0), x, jnp.array([0, 0]), train=False)
  logits, class_logits = model.apply(variables, x, jnp.array([0, 0]), train=False)
  assert logits.shape == (B,) and logits.dtype == jnp.float32 and class_logits is None
  np.testing.assert_allclose(logits[0], logits[1], rtol=1e-6)
  other, _ = model.apply(variables, x, jnp.array([0, 5]), train=False)
  np.testing.assert_allclose(other[0], logits[0], rtol=1e-6)
  assert abs(other[1] - logits[1]) > 1e-4


def test_discriminator_acgan_class_logits():
  """The ACGAN head: logits and class logits are two linear maps of the same features, the
  sum over positions of the last block's ReLU (the labels do not enter)."""
  model = resnet.Discriminator(width=16, num_classes=10, conditioning="acgan")
  x = _images()
  variables = model.init(jax.random.key(0), x, jnp.array([1, 2]), train=False)
  (logits, class_logits), captured = model.apply(variables, x, jnp.array([1, 2]), train=False,
                                                 capture_intermediates=True)
  assert logits.shape == (B,) and logits.dtype == jnp.float32
  assert class_logits.shape == (B, 10) and class_logits.dtype == jnp.float32
  last_block = np.asarray(captured["intermediates"]["DBlock_2"]["__call__"][0], np.float64)
  features = np.maximum(last_block, 0).sum(axis=(1, 2))
  head = jax.tree.map(np.asarray, variables["params"]["DiscriminatorHead_0"])
  np.testing.assert_allclose(logits, features @ head["Dense_0"]["kernel"][:, 0]
                             + head["Dense_0"]["bias"][0], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(class_logits, features @ head["Dense_1"]["kernel"]
                             + head["Dense_1"]["bias"], rtol=1e-4, atol=1e-4)
  # The class logits are the same for other labels: ACGAN classifies, it is not conditioned.
  _, other = model.apply(variables, x, jnp.array([7, 7]), train=False)
  np.testing.assert_array_equal(other, class_logits)


# Parameter counts from the architecture (Table 4), layer by layer: with biases, except the
# generator's layers that feed a BatchNorm.
def _conv(k, cin, cout):
  return k * k * cin * cout + cout


def _dense(cin, cout):
  return cin * cout + cout


def _bn(c):
  return 2 * c  # Scale and offset; the running mean and variance are batch_stats, not params.


def test_parameter_counts_match_the_architecture():
  latent, gw, dw, c, k = 128, 256, 128, 3, 10
  no_bias = lambda k, cin, cout: k * k * cin * cout
  gblock = _bn(gw) + no_bias(3, gw, gw) + _bn(gw) + no_bias(3, gw, gw) + no_bias(1, gw, gw)
  g_expected = no_bias(1, latent, 4 * 4 * gw) + 3 * gblock + _bn(gw) + _conv(3, gw, c)
  optimized = _conv(3, c, dw) + _conv(3, dw, dw) + _conv(1, c, dw)
  down = _conv(3, dw, dw) + _conv(3, dw, dw) + _conv(1, dw, dw)
  plain = _conv(3, dw, dw) + _conv(3, dw, dw)  # Identity shortcut: no parameters.
  d_expected = optimized + down + 2 * plain + _dense(dw, 1)
  assert (g_expected, d_expected) == (4_270_339, 1_053_825)  # About 4.3M and 1.05M.

  shapes = lambda model, *args: jax.eval_shape(model.init, jax.random.key(0), *args)
  z, x, labels = jnp.zeros((B, latent)), jnp.zeros((B, 32, 32, c)), jnp.zeros((B,), jnp.int32)
  assert _num_params(shapes(resnet.Generator(), z)) == g_expected
  assert _num_params(shapes(resnet.Discriminator(), x)) == d_expected
  # Conditional: each of the 6 block BatchNorms trades its scale and offset for per-class ones.
  g_cond = g_expected - 6 * _bn(gw) + 6 * 2 * k * gw
  assert _num_params(shapes(resnet.Generator(num_classes=k), z, labels)) == g_cond
  d_proj = d_expected + k * dw  # The projection's class embedding.
  assert _num_params(shapes(resnet.Discriminator(num_classes=k, conditioning="projection"),
                            x, labels)) == d_proj
  d_acgan = d_expected + _dense(dw, k)
  assert _num_params(shapes(resnet.Discriminator(num_classes=k, conditioning="acgan"),
                            x, labels)) == d_acgan


def _sigmas(batch_stats, params):
  """{path of a normalized parameter: its stored sigma}, from SpectralNorm's batch_stats keys
  (".../SpectralNorm_i/<layer>/<param>/sigma" for the parameter at ".../<layer>/<param>")."""
  out = {}
  for key, value in flax.traverse_util.flatten_dict(batch_stats).items():
    *parents, wrapper, name = key
    assert wrapper.startswith("SpectralNorm_")
    layer, param, kind = name.split("/")
    if kind == "sigma":
      out[(*parents, layer, param)] = float(value)
  assert flax.traverse_util.flatten_dict(params).keys() >= out.keys()
  return out


@pytest.mark.parametrize("conditioning", ["none", "projection"])
def test_spectral_norm_normalizes_every_weight(conditioning):
  model = resnet.Discriminator(width=32, num_classes=10, conditioning=conditioning)
  x, labels = _images(), jnp.array([1, 2])
  variables = model.init(jax.random.key(0), x, labels)
  params, stats = variables["params"], variables["batch_stats"]
  flat = flax.traverse_util.flatten_dict(params)
  matrices = {k for k, v in flat.items() if v.ndim >= 2}
  assert _sigmas(stats, params).keys() == matrices  # Every conv, dense and embedding.

  step = jax.jit(lambda stats: model.apply({"params": params, "batch_stats": stats}, x, labels,
                                           mutable=["batch_stats"])[1]["batch_stats"])
  for _ in range(20):
    stats = step(stats)
  for path, sigma in _sigmas(stats, params).items():
    kernel = np.asarray(flat[path])
    top = np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]) / sigma, compute_uv=False)[0]
    assert abs(top - 1.0) < 0.05, (path, top)

  # Evaluation leaves the power iteration where it is.
  _, frozen = model.apply({"params": params, "batch_stats": stats}, x, labels, train=False,
                          mutable=["batch_stats"])
  jax.tree.map(np.testing.assert_array_equal, frozen["batch_stats"], stats)


def test_without_spectral_norm_there_are_no_batch_stats():
  model = resnet.Discriminator(width=16, spectral_norm=False)
  variables = model.init(jax.random.key(0), _images())
  assert set(variables) == {"params"}
  logits, _ = model.apply(variables, _images())
  assert logits.shape == (B,)


def test_bfloat16_compute_gives_finite_float32_outputs():
  z, labels = jax.random.normal(jax.random.key(0), (B, 32)), jnp.array([0, 3])
  generator = resnet.Generator(width=16, num_classes=4, dtype=jnp.bfloat16)
  variables = generator.init(jax.random.key(1), z, labels)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  images, _ = generator.apply(variables, z, labels, mutable=["batch_stats"])
  assert images.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(images)))

  discriminator = resnet.Discriminator(width=16, num_classes=4, conditioning="acgan",
                                       dtype=jnp.bfloat16)
  variables = discriminator.init(jax.random.key(2), images, labels)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  (logits, class_logits), _ = discriminator.apply(variables, images, labels,
                                                  mutable=["batch_stats"])
  for out in (logits, class_logits):
    assert out.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(out)))


def test_upsample_is_nearest_neighbour():
  x = jax.random.normal(jax.random.key(0), (B, 3, 5, 4))
  np.testing.assert_array_equal(resnet._upsample(x), jnp.repeat(jnp.repeat(x, 2, 1), 2, 2))
