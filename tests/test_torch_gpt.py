"""benchmarks/torch_gpt.py computes gen's GPT: the same loss and gradients from the same
weights, the same parameters and the same learning-rate schedule, so that compare.py times and
trains the same model on both sides."""
import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from conftest import ROOT, load_config  # noqa: E402
from gen.families import lm  # noqa: E402
from gen.models.gpt import GPT  # noqa: E402


def _torch_gpt():
  spec = importlib.util.spec_from_file_location("torch_gpt", ROOT / "benchmarks" / "torch_gpt.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


torch_gpt = _torch_gpt()


def _gen_params(model) -> dict:
  """The torch model's weights as gen's params (Linear (out, in) -> Dense kernel (in, out))."""
  params = {}
  for name, tensor in model.state_dict().items():
    if name == "lm_head.weight":  # Tied to wte.
      continue
    value = tensor.detach().numpy()
    path = name.split(".")
    if path[0] == "h":
      path = [f"h_{path[1]}", *path[2:]]
    leaf = path[-1]
    if leaf == "weight":
      is_linear = path[-2] in ("c_attn", "c_proj", "c_fc")
      path[-1] = ("kernel" if is_linear else "embedding" if path[-2] in ("wte", "wpe")
                  else "scale")
      value = value.T if is_linear else value
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = jnp.asarray(value)
  return params


@pytest.mark.parametrize("bias", [False, True])
def test_the_reference_has_gen_loss_and_gradients_from_the_same_weights(bias):
  config = load_config("gpt_pydoc_tiny")
  m = config.model
  m.n_layer, m.n_head, m.n_embd, m.block_size, m.vocab_size, m.bias = 2, 2, 32, 16, 40, bias
  torch.manual_seed(0)
  reference, _, _ = torch_gpt.build(config)
  if bias:  # Zero at init: give them values, so that a misplaced bias shows.
    with torch.no_grad():
      for name, p in reference.named_parameters():
        if name.endswith("bias"):
          p.normal_(0.0, 0.1)
  params = _gen_params(reference)
  model = GPT(m.vocab_size, m.block_size, m.n_layer, m.n_head, m.n_embd, use_bias=bias)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  assert jax.tree.map(lambda x: x.shape, shapes) == jax.tree.map(lambda x: x.shape, params)

  tokens = np.random.default_rng(0).integers(0, m.vocab_size, (3, m.block_size + 1))
  torch_loss = reference(torch.from_numpy(tokens[:, :-1]), torch.from_numpy(tokens[:, 1:]))
  torch_loss.backward()
  loss_fn = lm.make_loss({"gpt": model}, config)
  loss, grads = jax.value_and_grad(loss_fn)(params, jnp.asarray(tokens), train=False)
  np.testing.assert_allclose(float(loss), float(torch_loss.detach()), rtol=1e-5)
  np.testing.assert_allclose(grads["h_1"]["attn"]["c_attn"]["kernel"],
                             reference.h[1].attn.c_attn.weight.grad.numpy().T, atol=1e-6)
  # wte's gradient sums the embedding's and the tied output layer's.
  np.testing.assert_allclose(grads["wte"]["embedding"], reference.wte.weight.grad.numpy(),
                             atol=1e-6)


def test_the_reference_schedule_is_gen_schedule():
  config = load_config("gpt_pydoc_tiny")
  _, _, torch_schedule = torch_gpt.build(config)
  gen_schedule = lm.learning_rate_schedule(config)
  steps = [0, 1, 50, 99, 100, 101, 1000, 1999, 2000, 2500]
  np.testing.assert_allclose([float(gen_schedule(s)) for s in steps],
                             [torch_schedule(s) for s in steps], rtol=1e-6)
