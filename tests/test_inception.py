"""gen.inception / gen.models.inception: the FID InceptionV3 port, its weight loader, resizing.

No weights file is available here (and nothing may download), so the network runs on random
parameters in `InceptionV3().init`'s tree; the loader is tested on .pth files written in
torch's format with the standard library only. Where torch is installed, files torch wrote,
`F.interpolate` and a torch transcription of pytorch-fid's forward pass are checked too.
"""
import collections
import io
import math
import pickle
import struct
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen import inception
from gen.models.inception import InceptionV3

# ---------------------------------------------------------------------------------------
# The architecture, written out independently of the Flax module.
# ---------------------------------------------------------------------------------------


def fid_inception_convs() -> list[tuple[str, int, int, int, int]]:
  """(state-dict prefix, Cin, Cout, kh, kw) of every BasicConv2d of pytorch-fid's network.

  torchvision's Inception3(num_classes=1008, aux_logits=False): pytorch-fid's FID blocks
  (FIDInceptionA/C/E_1/E_2) only change pooling, so the convolutions are torchvision's.
  """
  convs = [("Conv2d_1a_3x3", 3, 32, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3),
           ("Conv2d_2b_3x3", 32, 64, 3, 3), ("Conv2d_3b_1x1", 64, 80, 1, 1),
           ("Conv2d_4a_3x3", 80, 192, 3, 3)]

  def inception_a(name, cin, pool_features):
    return [(f"{name}.branch1x1", cin, 64, 1, 1), (f"{name}.branch5x5_1", cin, 48, 1, 1),
            (f"{name}.branch5x5_2", 48, 64, 5, 5), (f"{name}.branch3x3dbl_1", cin, 64, 1, 1),
            (f"{name}.branch3x3dbl_2", 64, 96, 3, 3), (f"{name}.branch3x3dbl_3", 96, 96, 3, 3),
            (f"{name}.branch_pool", cin, pool_features, 1, 1)]

  def inception_b(name, cin):
    return [(f"{name}.branch3x3", cin, 384, 3, 3), (f"{name}.branch3x3dbl_1", cin, 64, 1, 1),
            (f"{name}.branch3x3dbl_2", 64, 96, 3, 3), (f"{name}.branch3x3dbl_3", 96, 96, 3, 3)]

  def inception_c(name, cin, c7):
    return [(f"{name}.branch1x1", cin, 192, 1, 1), (f"{name}.branch7x7_1", cin, c7, 1, 1),
            (f"{name}.branch7x7_2", c7, c7, 1, 7), (f"{name}.branch7x7_3", c7, 192, 7, 1),
            (f"{name}.branch7x7dbl_1", cin, c7, 1, 1), (f"{name}.branch7x7dbl_2", c7, c7, 7, 1),
            (f"{name}.branch7x7dbl_3", c7, c7, 1, 7), (f"{name}.branch7x7dbl_4", c7, c7, 7, 1),
            (f"{name}.branch7x7dbl_5", c7, 192, 1, 7), (f"{name}.branch_pool", cin, 192, 1, 1)]

  def inception_d(name, cin):
    return [(f"{name}.branch3x3_1", cin, 192, 1, 1), (f"{name}.branch3x3_2", 192, 320, 3, 3),
            (f"{name}.branch7x7x3_1", cin, 192, 1, 1), (f"{name}.branch7x7x3_2", 192, 192, 1, 7),
            (f"{name}.branch7x7x3_3", 192, 192, 7, 1), (f"{name}.branch7x7x3_4", 192, 192, 3, 3)]

  def inception_e(name, cin):
    return [(f"{name}.branch1x1", cin, 320, 1, 1), (f"{name}.branch3x3_1", cin, 384, 1, 1),
            (f"{name}.branch3x3_2a", 384, 384, 1, 3), (f"{name}.branch3x3_2b", 384, 384, 3, 1),
            (f"{name}.branch3x3dbl_1", cin, 448, 1, 1), (f"{name}.branch3x3dbl_2", 448, 384, 3, 3),
            (f"{name}.branch3x3dbl_3a", 384, 384, 1, 3),
            (f"{name}.branch3x3dbl_3b", 384, 384, 3, 1), (f"{name}.branch_pool", cin, 192, 1, 1)]

  convs += inception_a("Mixed_5b", 192, 32) + inception_a("Mixed_5c", 256, 64)
  convs += inception_a("Mixed_5d", 288, 64) + inception_b("Mixed_6a", 288)
  for name, c7 in [("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)]:
    convs += inception_c(name, 768, c7)
  convs += inception_d("Mixed_7a", 768) + inception_e("Mixed_7b", 1280)
  convs += inception_e("Mixed_7c", 2048)
  return convs


def torch_state_dict_shapes() -> dict[str, tuple[int, ...]]:
  """pytorch-fid's state dict: {name: shape}, PyTorch layouts (conv OIHW, fc [out, in])."""
  shapes = {}
  for name, cin, cout, kh, kw in fid_inception_convs():
    shapes[f"{name}.conv.weight"] = (cout, cin, kh, kw)
    for leaf in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{name}.bn.{leaf}"] = (cout,)
    shapes[f"{name}.bn.num_batches_tracked"] = ()
  shapes["fc.weight"], shapes["fc.bias"] = (1008, 2048), (1008,)
  return shapes


def to_torch_state_dict(variables) -> dict[str, np.ndarray]:
  """The inverse of the loader's mapping, to write Flax variables as a torch state dict."""
  state_dict = {}
  for name in torch_state_dict_shapes():
    *path, leaf = name.split(".")
    params = variables["params"]
    stats = variables["batch_stats"]
    for part in path:
      params, stats = params.get(part, {}), stats.get(part, {})
    if name == "fc.weight":
      value = np.asarray(params["kernel"]).T
    elif leaf == "weight" and path[-1] == "conv":
      value = np.asarray(params["kernel"]).transpose(3, 2, 0, 1)  # HWIO -> OIHW.
    elif leaf == "num_batches_tracked":
      value = np.array(1000, np.int64)
    else:
      value = {"weight": params.get("scale"), "bias": params.get("bias"),
               "running_mean": stats.get("mean"), "running_var": stats.get("var")}[leaf]
    state_dict[name] = np.asarray(value)
  return state_dict


# ---------------------------------------------------------------------------------------
# Writing .pth files as torch.save does, with the standard library only.
# ---------------------------------------------------------------------------------------


class _Global:
  """A global that the pickle names (GLOBAL "module\\nname") without it being importable."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # Pickle only accepts callables as reduce functions.
    raise NotImplementedError


_REBUILD_TENSOR = _Global("torch._utils", "_rebuild_tensor_v2")
_STORAGE_CLASS = {np.dtype(np.float32): _Global("torch", "FloatStorage"),
                  np.dtype(np.int64): _Global("torch", "LongStorage")}


class _Storage:

  def __init__(self, key: str, data: np.ndarray):
    self.key, self.data = key, np.ascontiguousarray(data).reshape(-1)


class _Tensor:
  """Reduces like a torch.Tensor: _rebuild_tensor_v2(storage, offset, size, stride, ...)."""

  def __init__(self, storage: _Storage, offset: int, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def __reduce__(self):
    return (_REBUILD_TENSOR, (self.storage, self.offset, tuple(self.size), tuple(self.stride),
                              False, collections.OrderedDict()))


class _TorchPickler(pickle._Pickler):  # The Python pickler: its dispatch table is extensible.
  dispatch = dict(pickle._Pickler.dispatch)

  def __init__(self, file, legacy: bool):
    super().__init__(file, protocol=2)  # torch.save's default protocol.
    self.legacy = legacy

  def _save_named_global(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
    self.memoize(obj)

  dispatch[_Global] = _save_named_global

  def persistent_id(self, obj):
    if not isinstance(obj, _Storage):
      return None
    pid = ("storage", _STORAGE_CLASS[obj.data.dtype], obj.key, "cpu", obj.data.size)
    return pid + (None,) if self.legacy else pid  # Legacy ids end with view metadata.


def _tensors(state_dict: dict) -> collections.OrderedDict:
  """Each array as a contiguous tensor with its own storage, keyed "0", "1", ..."""
  obj = collections.OrderedDict()
  for i, (name, array) in enumerate(state_dict.items()):
    array = np.ascontiguousarray(array)
    stride = [s // array.itemsize for s in array.strides]
    obj[name] = _Tensor(_Storage(str(i), array), 0, array.shape, stride)
  return obj


def _storages(obj: collections.OrderedDict) -> dict[str, np.ndarray]:
  return {t.storage.key: t.storage.data for t in obj.values()}


def write_torch_zip(path, obj: collections.OrderedDict):
  """The zip format of torch >= 1.6: <archive>/data.pkl and a record per storage."""
  buffer = io.BytesIO()
  _TorchPickler(buffer, legacy=False).dump(obj)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
    archive.writestr("archive/data.pkl", buffer.getvalue())
    archive.writestr("archive/byteorder", "little")
    for key, data in _storages(obj).items():
      archive.writestr(f"archive/data/{key}", data.astype(data.dtype.newbyteorder("<")).tobytes())
    archive.writestr("archive/version", "3\n")


def write_torch_legacy(path, obj: collections.OrderedDict):
  """The format of torch < 1.6: magic, version, sys_info, the pickle, keys, raw storages."""
  storages = _storages(obj)
  with open(path, "wb") as f:
    pickle.dump(0x1950a86a20f9469cfc6c, f, protocol=2)
    pickle.dump(1001, f, protocol=2)
    pickle.dump({"protocol_version": 1001, "little_endian": True,
                 "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)
    _TorchPickler(f, legacy=True).dump(obj)
    keys = sorted(storages)
    pickle.dump(keys, f, protocol=2)
    for key in keys:
      f.write(struct.pack("<q", storages[key].size))
      f.write(storages[key].astype("<" + storages[key].dtype.str[1:]).tobytes())


def tiny_state_dict():
  """A couple of conv/BN tensors plus the awkward cases: a strided view, a shared storage."""
  rng = np.random.default_rng(0)
  weight = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)  # OIHW with kh != kw.
  shared = _Storage("1", rng.standard_normal(20).astype(np.float32))
  fc = _Storage("2", rng.standard_normal((5, 6)).astype(np.float32))  # Holds fc.weight^T.
  obj = _tensors({"Conv2d_1a_3x3.conv.weight": weight})
  obj["Conv2d_1a_3x3.bn.weight"] = _Tensor(shared, 0, (4,), (1,))
  obj["Conv2d_1a_3x3.bn.bias"] = _Tensor(shared, 4, (4,), (1,))
  obj["Conv2d_1a_3x3.bn.running_mean"] = _Tensor(shared, 8, (4,), (1,))
  obj["Conv2d_1a_3x3.bn.running_var"] = _Tensor(shared, 12, (4,), (2,))  # Every other.
  obj["Conv2d_1a_3x3.bn.num_batches_tracked"] = _Tensor(
      _Storage("3", np.array([7], np.int64)), 0, (), ())
  obj["fc.weight"] = _Tensor(fc, 0, (6, 5), (1, 6))  # Transposed, not contiguous.
  expected = {
      "Conv2d_1a_3x3.conv.weight": weight,
      "Conv2d_1a_3x3.bn.weight": shared.data[0:4],
      "Conv2d_1a_3x3.bn.bias": shared.data[4:8],
      "Conv2d_1a_3x3.bn.running_mean": shared.data[8:12],
      "Conv2d_1a_3x3.bn.running_var": shared.data[12:20:2],
      "Conv2d_1a_3x3.bn.num_batches_tracked": np.array(7, np.int64),
      "fc.weight": fc.data.reshape(5, 6).T,
  }
  return obj, expected


# ---------------------------------------------------------------------------------------
# Fixtures: random variables (init, with BN statistics made distinct), written as a .pth.
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def variables():
  """Random variables with InceptionV3().init's tree, filled in NumPy.

  The tree comes from tracing `init` (jax.eval_shape); the values do not, because compiling
  init's ~190 random initialisers takes ~20 s on 2 CPU cores, for values that are only
  random numbers anyway. He-normal kernels keep activations O(1) through the 94 layers, and
  every BN leaf gets distinct random values so a swapped scale/bias/mean/var would show.
  """
  shapes = jax.eval_shape(lambda: InceptionV3().init(jax.random.key(0),
                                                     jnp.zeros((1, 75, 75, 3))))
  rng = np.random.default_rng(1)
  fill = {"kernel": lambda s: rng.normal(0, (2 / math.prod(s[:-1])) ** 0.5, s),
          "scale": lambda s: rng.uniform(0.5, 1.5, s), "bias": lambda s: rng.normal(0, 0.1, s),
          "mean": lambda s: rng.normal(0, 0.1, s), "var": lambda s: rng.uniform(0.5, 2, s)}
  return jax.tree_util.tree_map_with_path(
      lambda path, x: fill[path[-1].key](x.shape).astype(np.float32), shapes)


@pytest.fixture(scope="module")
def weights_file(variables, tmp_path_factory):
  path = tmp_path_factory.mktemp("inception") / "fake_inception.pth"
  write_torch_zip(path, _tensors(to_torch_state_dict(variables)))
  return path


# ---------------------------------------------------------------------------------------
# Tests.
# ---------------------------------------------------------------------------------------


def test_parameters_match_pytorch_fid_architecture():
  shapes = jax.eval_shape(lambda: InceptionV3().init(jax.random.key(0),
                                                     jnp.zeros((1, 299, 299, 3))))
  got = {jax.tree_util.keystr(k): v.shape
         for k, v in jax.tree_util.tree_flatten_with_path(shapes)[0]}
  want = {}
  for name, cin, cout, kh, kw in fid_inception_convs():
    prefix = "".join(f"['{p}']" for p in name.split("."))
    want[f"['params']{prefix}['conv']['kernel']"] = (kh, kw, cin, cout)
    for leaf in ("scale", "bias"):
      want[f"['params']{prefix}['bn']['{leaf}']"] = (cout,)
    for leaf in ("mean", "var"):
      want[f"['batch_stats']{prefix}['bn']['{leaf}']"] = (cout,)
  want["['params']['fc']['kernel']"], want["['params']['fc']['bias']"] = (2048, 1008), (1008,)
  assert got == want

  # PyTorch's parameters() (conv weights, BN weight/bias, fc), running statistics excluded.
  count = sum(cout * cin * kh * kw + 2 * cout for _, cin, cout, kh, kw in fid_inception_convs())
  count += 2048 * 1008 + 1008
  assert sum(math.prod(v.shape) for v in jax.tree.leaves(shapes["params"])) == count
  # torchvision's inception_v3(aux_logits=False) has 23,834,568 parameters with 1000 classes;
  # 1008 classes add 8 · (2048 + 1) fc parameters.
  assert count == 23_834_568 + 8 * 2049 == 23_850_960
  assert len(fid_inception_convs()) == 94


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).uniform(size=(2, 20, 24, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def features(variables, images):
  """make_feature_fn's outputs on `images`: compiled once, shared by the tests below."""
  return jax.tree.map(np.asarray, inception.make_feature_fn(variables)(images))


def test_logits_are_pool3_through_the_fc_layer(variables, features):
  # pool3 itself is checked against pytorch-fid's forward in test_matches_pytorch_fid_forward,
  # which CI runs (it installs torch); here, what holds without torch: the shapes, and both
  # logit heads as the fc layer of pool3.
  out = features
  assert out["pool3"].shape == (2, 2048)
  assert out["logits"].shape == (2, 1008)
  assert out["logits_unbiased"].shape == (2, 1008)
  assert all(np.isfinite(v).all() for v in out.values())
  assert (out["pool3"] >= 0).all() and out["pool3"].std() > 0  # Means of ReLUs; not constant.
  kernel, bias = variables["params"]["fc"]["kernel"], variables["params"]["fc"]["bias"]
  np.testing.assert_allclose(out["logits"], out["pool3"] @ kernel + bias, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["logits_unbiased"], out["pool3"] @ kernel, rtol=1e-4, atol=1e-5)
  # Different images, different features (the batch is not mixed up or collapsed).
  assert not np.allclose(out["pool3"][0], out["pool3"][1])


def _pytorch_fid_forward(torch, state_dict, images: np.ndarray):
  """pytorch-fid's InceptionV3 forward (FID blocks, resize, 2x - 1, pool3, fc) in torch ops.

  Transcribed from torchvision's Inception3/BasicConv2d/Inception{A..E} and pytorch-fid's
  FIDInceptionA/C/E_1/E_2 (pool branches), on NCHW tensors, so that PyTorch's own padding,
  pooling and concatenation semantics are the reference.
  """
  F = torch.nn.functional
  sd = {k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}

  def conv(name, x, stride=1, padding=0):
    x = F.conv2d(x, sd[f"{name}.conv.weight"], stride=stride, padding=padding)
    x = F.batch_norm(x, sd[f"{name}.bn.running_mean"], sd[f"{name}.bn.running_var"],
                     sd[f"{name}.bn.weight"], sd[f"{name}.bn.bias"], training=False, eps=1e-3)
    return F.relu(x)

  def avg_pool(x):  # pytorch-fid's patch: TF leaves padded zeros out of the mean.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

  def block_a(n, x):
    b5 = conv(f"{n}.branch5x5_2", conv(f"{n}.branch5x5_1", x), padding=2)
    b3 = conv(f"{n}.branch3x3dbl_1", x)
    b3 = conv(f"{n}.branch3x3dbl_3", conv(f"{n}.branch3x3dbl_2", b3, padding=1), padding=1)
    return torch.cat([conv(f"{n}.branch1x1", x), b5, b3,
                      conv(f"{n}.branch_pool", avg_pool(x))], 1)

  def block_b(n, x):
    b3 = conv(f"{n}.branch3x3dbl_2", conv(f"{n}.branch3x3dbl_1", x), padding=1)
    return torch.cat([conv(f"{n}.branch3x3", x, stride=2),
                      conv(f"{n}.branch3x3dbl_3", b3, stride=2),
                      F.max_pool2d(x, kernel_size=3, stride=2)], 1)

  def block_c(n, x):
    b7 = conv(f"{n}.branch7x7_1", x)
    b7 = conv(f"{n}.branch7x7_2", b7, padding=(0, 3))
    b7 = conv(f"{n}.branch7x7_3", b7, padding=(3, 0))
    bd = conv(f"{n}.branch7x7dbl_1", x)
    for i, padding in [(2, (3, 0)), (3, (0, 3)), (4, (3, 0)), (5, (0, 3))]:
      bd = conv(f"{n}.branch7x7dbl_{i}", bd, padding=padding)
    return torch.cat([conv(f"{n}.branch1x1", x), b7, bd,
                      conv(f"{n}.branch_pool", avg_pool(x))], 1)

  def block_d(n, x):
    b3 = conv(f"{n}.branch3x3_2", conv(f"{n}.branch3x3_1", x), stride=2)
    b7 = conv(f"{n}.branch7x7x3_1", x)
    b7 = conv(f"{n}.branch7x7x3_2", b7, padding=(0, 3))
    b7 = conv(f"{n}.branch7x7x3_3", b7, padding=(3, 0))
    b7 = conv(f"{n}.branch7x7x3_4", b7, stride=2)
    return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)

  def block_e(n, x, pool):
    b3 = conv(f"{n}.branch3x3_1", x)
    b3 = torch.cat([conv(f"{n}.branch3x3_2a", b3, padding=(0, 1)),
                    conv(f"{n}.branch3x3_2b", b3, padding=(1, 0))], 1)
    bd = conv(f"{n}.branch3x3dbl_2", conv(f"{n}.branch3x3dbl_1", x), padding=1)
    bd = torch.cat([conv(f"{n}.branch3x3dbl_3a", bd, padding=(0, 1)),
                    conv(f"{n}.branch3x3dbl_3b", bd, padding=(1, 0))], 1)
    return torch.cat([conv(f"{n}.branch1x1", x), b3, bd, conv(f"{n}.branch_pool", pool(x))], 1)

  x = torch.from_numpy(images).permute(0, 3, 1, 2)
  x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
  x = 2 * x - 1
  x = conv("Conv2d_1a_3x3", x, stride=2)
  x = conv("Conv2d_2b_3x3", conv("Conv2d_2a_3x3", x), padding=1)
  x = F.max_pool2d(x, kernel_size=3, stride=2)
  x = conv("Conv2d_4a_3x3", conv("Conv2d_3b_1x1", x))
  x = F.max_pool2d(x, kernel_size=3, stride=2)
  for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
    x = block_a(name, x)
  x = block_b("Mixed_6a", x)
  for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
    x = block_c(name, x)
  x = block_d("Mixed_7a", x)
  x = block_e("Mixed_7b", x, avg_pool)  # FIDInceptionE_1.
  x = block_e("Mixed_7c", x, lambda y: F.max_pool2d(y, kernel_size=3, stride=1, padding=1))
  pool3 = x.mean(dim=(2, 3))
  return pool3.numpy(), F.linear(pool3, sd["fc.weight"], sd["fc.bias"]).numpy()


def test_matches_pytorch_fid_forward(variables, images, features):
  torch = pytest.importorskip("torch")
  with torch.no_grad():
    pool3, logits = _pytorch_fid_forward(torch, to_torch_state_dict(variables), images)
  # Float32 summation order differs (XLA vs oneDNN); seen: ~5e-7 of the largest value.
  scale = np.abs(pool3).max()
  np.testing.assert_allclose(features["pool3"], pool3, atol=1e-5 * scale)
  np.testing.assert_allclose(features["logits"], logits, atol=1e-5 * np.abs(logits).max())


def test_load_params_round_trip(variables, weights_file):
  loaded = inception.load_params(weights_file)
  assert jax.tree.structure(loaded) == jax.tree.structure(variables)
  for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(loaded)[0],
                               jax.tree.leaves(variables)):
    assert got.dtype == np.float32, jax.tree_util.keystr(path)
    np.testing.assert_array_equal(got, want, err_msg=jax.tree_util.keystr(path))

  # The layout conversions, against the state dict as torch would hold it.
  state_dict = inception.read_state_dict(weights_file)
  conv = state_dict["Mixed_6b.branch7x7_2.conv.weight"]  # OIHW [128, 128, 1, 7].
  assert conv.shape == (128, 128, 1, 7)
  kernel = loaded["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"]
  assert kernel.shape == (1, 7, 128, 128)
  np.testing.assert_array_equal(kernel[0, 5, 3, 9], conv[9, 3, 0, 5])  # HWIO[h, w, i, o].
  np.testing.assert_array_equal(loaded["params"]["fc"]["kernel"], state_dict["fc.weight"].T)
  np.testing.assert_array_equal(loaded["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["var"],
                                state_dict["Mixed_7c.branch_pool.bn.running_var"])


@pytest.mark.parametrize("writer", [write_torch_zip, write_torch_legacy])
def test_read_state_dict_formats(tmp_path, writer):
  obj, expected = tiny_state_dict()
  path = tmp_path / "tiny.pth"
  writer(path, obj)
  state_dict = inception.read_state_dict(path)
  assert list(state_dict) == list(expected)
  for name, want in expected.items():
    assert state_dict[name].dtype == want.dtype and state_dict[name].shape == want.shape, name
    np.testing.assert_array_equal(state_dict[name], want, err_msg=name)


def test_state_dict_conversion_is_strict(tmp_path, weights_file):
  obj, _ = tiny_state_dict()
  path = tmp_path / "tiny.pth"
  write_torch_zip(path, obj)
  with pytest.raises(ValueError, match="missing"):
    inception.load_params(path)
  state_dict = inception.read_state_dict(weights_file)
  state_dict["AuxLogits.fc.weight"] = np.zeros((1008, 768), np.float32)
  with pytest.raises(ValueError, match="unexpected.*AuxLogits"):
    inception.state_dict_to_variables(state_dict)


def test_missing_weights_file_says_how_to_fetch(tmp_path):
  path = tmp_path / "nowhere" / "weights.pth"
  with pytest.raises(FileNotFoundError) as error:
    inception.load_params(path)
  message = str(error.value)
  assert inception.WEIGHTS_URL in message and str(path) in message
  assert f"curl -L -o {path} {inception.WEIGHTS_URL}" in message
  assert inception.default_weights_path().name == "pt_inception-2015-12-05-6726825d.pth"
  assert inception.default_weights_path().parent.parts[-2:] == (".cache", "gen")


def test_reader_refuses_code_and_corrupt_files(tmp_path):
  buffer = io.BytesIO()
  _TorchPickler(buffer, legacy=False).dump(collections.OrderedDict(x=_Global("os", "system")))
  path = tmp_path / "evil.pth"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", buffer.getvalue())
  with pytest.raises(pickle.UnpicklingError, match="os.system"):
    inception.read_state_dict(path)
  # A tensor claiming more elements than its storage holds must not read past it.
  write_torch_zip(path, collections.OrderedDict(
      x=_Tensor(_Storage("0", np.zeros(4, np.float32)), 2, (3,), (1,))))
  with pytest.raises(ValueError, match="does not fit"):
    inception.read_state_dict(path)
  (tmp_path / "junk.pth").write_bytes(b"not a torch file")
  with pytest.raises(ValueError, match="neither"):
    inception.read_state_dict(tmp_path / "junk.pth")


def _torch_bilinear(images: np.ndarray, out: int = 299) -> np.ndarray:
  """PyTorch's upsample_bilinear2d (align_corners=False), output pixel by output pixel, NHWC.

  In PyTorch's own arithmetic: float32 scale = in / out; the source coordinate
  scale·(i + 0.5) - 0.5 rounded once to float32 (the kernel's fused multiply-add), clamped
  below at 0; neighbours floor(src) and floor(src) + 1, the latter clamped to the last pixel;
  weights 1 - λ and λ = src - floor(src). The four-tap sum itself is done in float64.
  """
  _, height, width, _ = images.shape

  def source(size):
    scale = float(np.float32(size) / np.float32(out))
    # Python floats are float64, in which this product and difference are exact.
    src = np.array([max(np.float32(scale * (i + 0.5) - 0.5), np.float32(0)) for i in range(out)])
    i0 = np.minimum(np.floor(src).astype(int), size - 1)
    i1 = np.where(i0 < size - 1, i0 + 1, i0)
    lam = (src - i0.astype(np.float32)).astype(np.float32)
    return i0, i1, lam.astype(np.float64), (np.float32(1) - lam).astype(np.float64)

  y0, y1, ly1, ly0 = source(height)
  x0, x1, lx1, lx0 = source(width)
  ly1, ly0 = ly1[:, None, None], ly0[:, None, None]  # Broadcast over [out_h, out_w, C].
  lx1, lx0 = lx1[:, None], lx0[:, None]
  x = images.astype(np.float64)
  top = lx0 * x[:, y0][:, :, x0] + lx1 * x[:, y0][:, :, x1]
  bottom = lx0 * x[:, y1][:, :, x0] + lx1 * x[:, y1][:, :, x1]
  return ly0 * top + ly1 * bottom


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 28, 28, 1), (1, 331, 317, 3)])
def test_resize_matches_pytorch_bilinear(shape):
  images = np.random.default_rng(0).uniform(size=shape).astype(np.float32)
  got = np.asarray(inception.resize_for_inception(images))
  want = 2 * _torch_bilinear(images) - 1
  if shape[-1] == 1:
    want = np.repeat(want, 3, axis=-1)
  assert got.shape == (shape[0], 299, 299, 3)
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_resize_keeps_constant_images_constant():
  for shape in [(1, 8, 8, 3), (1, 28, 28, 1), (1, 299, 299, 3)]:
    got = np.asarray(inception.resize_for_inception(np.full(shape, 0.3, np.float32)))
    np.testing.assert_allclose(got, np.full((1, 299, 299, 3), 2 * 0.3 - 1), atol=1e-6)
  images = np.random.default_rng(0).uniform(size=(1, 299, 299, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(inception.resize_for_inception(images)), 2 * images - 1,
                             atol=1e-6)  # 299 -> 299 is the identity.


def test_reads_files_torch_wrote(tmp_path):
  torch = pytest.importorskip("torch")
  obj = collections.OrderedDict(
      a=torch.arange(24, dtype=torch.float32).reshape(2, 3, 4),
      b=torch.arange(12, dtype=torch.float32).reshape(3, 4).t(),  # A strided view.
      c=torch.tensor(5, dtype=torch.int64))
  obj["d"] = obj["a"][1]  # Shares a's storage at an offset.
  for legacy in (False, True):
    path = tmp_path / f"torch_{legacy}.pth"
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    state_dict = inception.read_state_dict(path)
    assert list(state_dict) == list(obj)
    for name, tensor in obj.items():
      np.testing.assert_array_equal(state_dict[name], tensor.numpy(), err_msg=name)
  # pytorch-fid's resize itself, up and down.
  for shape in [(2, 28, 40, 3), (1, 331, 317, 3)]:
    images = np.random.default_rng(0).uniform(size=shape).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(images).permute(0, 3, 1, 2),
                                           size=(299, 299), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(np.asarray(inception.resize_for_inception(images)),
                               2 * want.permute(0, 2, 3, 1).numpy() - 1, atol=1e-6)
