"""FID Inception features: pytorch-fid's weights read without torch, resizing, a jitted extractor.

    variables = load_params()            # ~/.cache/gen/pt_inception-2015-12-05-6726825d.pth
    features = make_feature_fn(variables)
    out = features(images)               # images [B, H, W, C] in [0, 1]
    out["pool3"]                         # [B, 2048] FID features

The weights are pytorch-fid's port of the 2015-12-05 TensorFlow Inception graph; nothing
downloads them here (fetch once with the command `load_params` prints when they are missing).
"""
import collections
import functools
import io
import pathlib
import pickle
import struct
import zipfile
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from gen.models.inception import InceptionV3

WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth")
WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_SIZE = 299

_HIGHEST = jax.lax.Precision.HIGHEST


def default_weights_path() -> pathlib.Path:
  """~/.cache/gen/pt_inception-2015-12-05-6726825d.pth."""
  return pathlib.Path("~/.cache/gen").expanduser() / WEIGHTS_FILENAME


# ---------------------------------------------------------------------------------------
# Reading a PyTorch state dict without torch.
#
# torch.save pickles the object with every tensor reduced to
# `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`, and
# every storage replaced by a persistent id ("storage", torch.FloatStorage, key, location,
# numel[, view_metadata]). The storages' bytes live outside the pickle: in the zip format
# (torch >= 1.6) as records `<archive>/data/<key>`; in the legacy format (torch < 1.6, which
# is what a 2019 checkpoint may well be) as `[int64 numel][bytes]` chunks after the pickle,
# in the order of a pickled list of keys. Unpickling only builds placeholders; the arrays
# are cut from the bytes afterwards, which serves both formats.
# ---------------------------------------------------------------------------------------

_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
  """Stands in for a `torch.<Type>Storage` class inside the pickle."""

  def __init__(self, dtype):
    self.dtype = np.dtype(dtype)


class _Storage:
  """A storage the pickle refers to by key; `offset`/`numel` in elements (legacy views)."""

  def __init__(self, key: str, dtype: np.dtype, offset: int, numel: int):
    self.key, self.dtype, self.offset, self.numel = key, dtype, offset, numel


class _Tensor:
  """The arguments of `_rebuild_tensor_v2`: a strided view of a storage, built later."""

  def __init__(self, storage: _Storage, offset: int, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def materialize(self, buffers: dict[str, np.ndarray]) -> np.ndarray:
    flat = buffers[self.storage.key][self.storage.offset:][:self.storage.numel]
    # as_strided does no bounds checks: a corrupt (or hostile) file must not read past flat.
    last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
    if min(self.size, default=1) > 0 and (self.offset < 0 or min(self.stride, default=0) < 0
                                          or last >= flat.size):
      raise ValueError(f"Tensor of size {self.size}, stride {self.stride}, offset "
                       f"{self.offset} does not fit its storage of {flat.size} elements.")
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[self.offset:], shape=self.size, strides=[s * itemsize for s in self.stride],
        writeable=False)
    return np.array(view)  # A contiguous copy that owns its memory.


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata  # Autograd state: irrelevant for inference.
  return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


class _TorchUnpickler(pickle.Unpickler):
  """Unpickles a torch.save'd state dict into placeholders, and refuses anything else.

  `find_class` admits only the few globals a state dict needs, so a hostile file cannot run
  code (plain pickle.load would call whatever the file names).
  """

  _GLOBALS = {
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
      ("collections", "OrderedDict"): collections.OrderedDict,
  }

  def __init__(self, file, legacy: bool):
    super().__init__(file)
    self._legacy = legacy
    self.storages: dict[str, _Storage] = {}

  def find_class(self, module: str, name: str):
    if (module, name) in self._GLOBALS:
      return self._GLOBALS[module, name]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    raise pickle.UnpicklingError(
        f"{module}.{name} is not part of a tensor state dict; refusing to load it.")

  def persistent_load(self, pid):
    kind = pid[0].decode() if isinstance(pid[0], bytes) else pid[0]
    if kind != "storage":
      raise pickle.UnpicklingError(f"Unknown persistent id {kind!r} in a torch file.")
    storage_type, key, _, numel = pid[1:5]
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"Unsupported storage type {storage_type!r}.")
    key = str(key)
    storage = self.storages.setdefault(key, _Storage(key, storage_type.dtype, 0, numel))
    view = pid[5] if self._legacy and len(pid) > 5 else None
    if view is not None:
      # A legacy storage view (torch < 0.4): elements [offset, offset + n) of the root storage.
      _, offset, view_numel = view
      return _Storage(key, storage.dtype, offset, view_numel)
    return storage


def _materialize(obj, buffers: dict[str, np.ndarray]):
  if isinstance(obj, _Tensor):
    return obj.materialize(buffers)
  if isinstance(obj, dict):
    return {k: _materialize(v, buffers) for k, v in obj.items()}
  return obj


def _read_zip(path: pathlib.Path) -> dict:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pickles) != 1:
      raise ValueError(f"{path} is a zip file but not a torch.save archive (no data.pkl).")
    prefix = pickles[0][:-len("data.pkl")]
    order = "<"
    if prefix + "byteorder" in names:
      order = "<" if archive.read(prefix + "byteorder").decode().strip() == "little" else ">"
    unpickler = _TorchUnpickler(io.BytesIO(archive.read(pickles[0])), legacy=False)
    obj = unpickler.load()
    buffers = {key: np.frombuffer(archive.read(f"{prefix}data/{key}"),
                                  storage.dtype.newbyteorder(order))
               for key, storage in unpickler.storages.items()}
  return _materialize(obj, buffers)


class _PlainUnpickler(pickle.Unpickler):
  """For the legacy header and key list: plain data only, no globals at all."""

  def find_class(self, module, name):
    raise pickle.UnpicklingError(f"Unexpected global {module}.{name} in a torch file header.")


def _read_legacy(path: pathlib.Path) -> dict:
  with open(path, "rb") as f:
    try:
      magic = _PlainUnpickler(f).load()
    except Exception as e:  # Anything unreadable: not a pickle at all.
      raise ValueError(f"{path} is neither a torch zip archive nor a legacy torch file.") from e
    if magic != _LEGACY_MAGIC:
      raise ValueError(f"{path} is neither a torch zip archive nor a legacy torch file.")
    _PlainUnpickler(f).load()  # Protocol version.
    sys_info = _PlainUnpickler(f).load()
    order = "<" if sys_info.get("little_endian", True) else ">"
    unpickler = _TorchUnpickler(f, legacy=True)
    obj = unpickler.load()
    keys = _PlainUnpickler(f).load()
    buffers = {}
    for key in keys:
      storage = unpickler.storages[str(key)]
      (numel,) = struct.unpack(order + "q", f.read(8))
      data = f.read(numel * storage.dtype.itemsize)
      buffers[str(key)] = np.frombuffer(data, storage.dtype.newbyteorder(order))
  return _materialize(obj, buffers)


def read_state_dict(path) -> dict[str, np.ndarray]:
  """A torch.save'd state dict (zip or legacy format) as {name: numpy array}, without torch."""
  path = pathlib.Path(path)
  state_dict = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
  if not isinstance(state_dict, dict):
    raise ValueError(f"{path} holds a {type(state_dict).__name__}, not a state dict.")
  return dict(state_dict)


# ---------------------------------------------------------------------------------------
# State dict -> Flax variables.
# ---------------------------------------------------------------------------------------


def _expected_shapes() -> dict:
  """InceptionV3's variables as ShapeDtypeStructs (traced, nothing computed)."""
  return jax.eval_shape(lambda: InceptionV3().init(
      jax.random.key(0), jnp.zeros((1, INCEPTION_SIZE, INCEPTION_SIZE, 3))))


def state_dict_to_variables(state_dict: dict[str, np.ndarray]) -> dict:
  """pytorch-fid's state dict -> {"params", "batch_stats"} for `InceptionV3.apply`.

  Names map one to one ("Mixed_5b.branch1x1.conv.weight" -> params/Mixed_5b/branch1x1/conv/
  kernel); conv weights go OIHW -> HWIO, the fc weight [out, in] -> [in, out], BatchNorm
  weight/bias/running_mean/running_var -> params scale/bias, batch_stats mean/var.
  `num_batches_tracked` (training bookkeeping) is dropped. Raises ValueError unless the
  result has exactly InceptionV3's variables and shapes, as load_state_dict(strict=True).
  """
  variables = {"params": {}, "batch_stats": {}}
  for name, array in state_dict.items():
    *path, leaf = name.split(".")
    array = np.asarray(array)
    if leaf == "num_batches_tracked":
      continue
    collection = "params"
    if leaf == "weight" and array.ndim == 4:
      leaf, array = "kernel", array.transpose(2, 3, 1, 0)  # OIHW -> HWIO.
    elif leaf == "weight" and array.ndim == 2:
      leaf, array = "kernel", array.T  # Linear: y = x W^T + b; Dense: y = x K + b.
    elif leaf == "weight":
      leaf = "scale"  # BatchNorm's gamma.
    elif leaf == "running_mean":
      collection, leaf = "batch_stats", "mean"
    elif leaf == "running_var":
      collection, leaf = "batch_stats", "var"
    elif leaf != "bias":
      raise ValueError(f"Unexpected tensor {name!r} in the Inception state dict.")
    node = variables[collection]
    for part in path:
      node = node.setdefault(part, {})
    node[leaf] = np.ascontiguousarray(array, dtype=np.float32)

  got = {jax.tree_util.keystr(k): leaf.shape
         for k, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]}
  want = {jax.tree_util.keystr(k): leaf.shape
          for k, leaf in jax.tree_util.tree_flatten_with_path(_expected_shapes())[0]}
  problems = [f"missing {k}" for k in sorted(want.keys() - got.keys())]
  problems += [f"unexpected {k}" for k in sorted(got.keys() - want.keys())]
  problems += [f"{k}: shape {got[k]}, expected {want[k]}"
               for k in sorted(want.keys() & got.keys()) if got[k] != want[k]]
  if problems:
    raise ValueError("Not pytorch-fid's FID Inception state dict: "
                     + "; ".join(problems[:10]) + (" ..." if len(problems) > 10 else ""))
  return variables


def load_params(path=None) -> dict:
  """The FID Inception's {"params", "batch_stats"} (numpy float32) from pytorch-fid's .pth.

  Args:
    path: the .pth file; default `default_weights_path()`.

  Raises:
    FileNotFoundError: the file is missing; the message says how to fetch it.
    ValueError: the file is not a torch state dict of the FID Inception.
  """
  path = pathlib.Path(path) if path is not None else default_weights_path()
  if not path.is_file():
    raise FileNotFoundError(
        f"FID Inception weights not found at {path}. They are pytorch-fid's port of the "
        f"2015-12-05 TensorFlow Inception ({WEIGHTS_URL}); gen never downloads them itself. "
        f"Fetch them once with:\n  mkdir -p {path.parent} && curl -L -o {path} {WEIGHTS_URL}")
  return state_dict_to_variables(read_state_dict(path))


# ---------------------------------------------------------------------------------------
# Preprocessing and the feature function.
# ---------------------------------------------------------------------------------------


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] weights of PyTorch's 1D bilinear resize, align_corners=False.

  Output i samples source coordinate src = (i + 0.5)·in/out - 0.5 (half-pixel centres),
  clamped below at 0 (PyTorch clamps; it does not mirror), from pixels lo = floor(src) and
  lo + 1, the latter clamped to the last pixel, with weights 1 - (src - lo) and src - lo.
  No antialiasing: downsampling, too, only looks at two pixels per axis.

  The arithmetic is PyTorch's: float32 scale = in / out and weights, with
  `scale·(i + 0.5) - 0.5` rounded once (its compiled kernels fuse the multiply-add). Exact
  arithmetic would differ from torch's `F.interpolate` by up to 1.5e-5 (a 331x317 input on
  torch 2 CPU: src near 300 has a float32 ulp of 3e-5); emulating it agrees to ~1e-7.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  centres = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
  # The float64 product of two float32s is exact, so one cast to float32 is one rounding.
  src = (np.float64(scale) * centres.astype(np.float64) - 0.5).astype(np.float32)
  src = np.maximum(src, np.float32(0.0))
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = np.clip(src - lo.astype(np.float32), np.float32(0.0), np.float32(1.0))
  weights = np.zeros((out_size, in_size), np.float32)
  rows = np.arange(out_size)
  np.add.at(weights, (rows, lo), np.float32(1.0) - frac)
  np.add.at(weights, (rows, hi), frac)  # Where hi == lo (last pixel) the two add up to 1.
  return weights


def resize_for_inception(images: jax.Array) -> jax.Array:
  """images [B, H, W, C] in [0, 1], C in {1, 3} -> [B, 299, 299, 3] in [-1, 1].

  pytorch-fid's preprocessing: `F.interpolate(x, (299, 299), mode="bilinear",
  align_corners=False)`, then 2x - 1. Written as two small matrix products rather than
  `jax.image.resize`, which antialiases when downsampling (PyTorch does not). Grey images
  are repeated to RGB, as pytorch-fid's loader does with PIL's convert("RGB").
  """
  images = jnp.asarray(images, jnp.float32)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"resize_for_inception expects [B, H, W, 1 or 3], got {images.shape}.")
  _, height, width, _ = images.shape
  rows = jnp.asarray(bilinear_matrix(height, INCEPTION_SIZE))
  cols = jnp.asarray(bilinear_matrix(width, INCEPTION_SIZE))
  x = jnp.einsum("oh,bhwc->bowc", rows, images, precision=_HIGHEST)
  x = jnp.einsum("pw,bowc->bopc", cols, x, precision=_HIGHEST)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  return 2.0 * x - 1.0


def make_feature_fn(params: dict) -> Callable[[jax.Array], dict[str, jax.Array]]:
  """A jitted `fn(images [B, H, W, C] in [0, 1]) -> InceptionV3's outputs` (see its doc).

  Args:
    params: {"params", "batch_stats"}, as from `load_params` or `InceptionV3().init`.

  The variables are put on the device once and passed to the jitted function as arguments
  (not closed over, which would bake ~95 MB of constants into every compilation). It
  compiles once per input shape, so feed fixed-size batches (pad the last one).
  """
  variables = jax.device_put({"params": params["params"], "batch_stats": params["batch_stats"]})
  model = InceptionV3()

  @jax.jit
  def features(variables: Any, images: jax.Array) -> dict[str, jax.Array]:
    return model.apply(variables, resize_for_inception(images))

  return functools.partial(features, variables)
