"""The VQ-VAE family (van den Oord et al. 2017): reconstruction plus β·commitment, with the
codebook learnt by EMA inside the step (gen.models.vqvae.VectorQuantizer).

The codebook and its statistics live in the "vqvae" module's batch_stats, so checkpoints,
resumes and sharding carry them like BatchNorm statistics.
"""
import jax
import jax.numpy as jnp

from gen import checks
from gen.families import ModuleState, TrainState, alternate, init_variables


def validate(config):
  checks.in_range(config.model.commitment_cost, "model.commitment_cost", 0.0, float("inf"))
  checks.positive(config.model.get("data_variance", 1.0), "model.data_variance")


def batch_spec(config, dataset) -> dict:
  return {"x": dataset.spec["x"]}


def code_usage(indices: jax.Array, num_codes: int) -> dict[str, jax.Array]:
  """perplexity = exp(entropy of the codes' frequencies in `indices`) and codes_used, the
  number of distinct codes: both equal k when k codes are used equally often."""
  frequencies = jax.nn.one_hot(indices.reshape(-1), num_codes, dtype=jnp.float32).mean(axis=0)
  entropy = jnp.sum(jax.scipy.special.entr(frequencies))
  return {"perplexity": jnp.exp(entropy),
          "codes_used": jnp.sum(frequencies > 0).astype(jnp.float32)}


def init_state(models, optimizers, config, spec, key) -> TrainState:
  init_key, rng = jax.random.split(key)
  params, codebook = init_variables(models["vqvae"], init_key, jnp.zeros((1, *spec["x"].shape)),
                                    train=False)
  return TrainState.create(rng, {"vqvae": ModuleState.create(params, optimizers["vqvae"],
                                                             codebook)})


def make_train_step(models, optimizers, config):
  vqvae = models["vqvae"]
  beta = config.model.commitment_cost
  # Sonnet's example divides the MSE by the data's variance; 1.0 is plain MSE in [-1, 1].
  data_variance = config.model.get("data_variance", 1.0)

  def train_step(state: TrainState, batch, rng):
    """batch["x"] [B, H, W, C] in [-1, 1] -> (state with the codebook updated, scalar metrics)."""
    x = batch["x"]
    module = state.modules["vqvae"]

    def loss_fn(params):
      (decoded, indices, commitment), updates = vqvae.apply(
          module.variables(params), x, train=True, rngs={"restart": rng},
          mutable=["batch_stats"])
      reconstruction = jnp.mean((decoded - x)**2) / data_variance
      loss = reconstruction + beta * commitment
      return loss, (updates["batch_stats"], indices,
                    {"reconstruction": reconstruction, "commitment": commitment})

    (loss, (codebook, indices, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        module.params)
    new_state = state.next(vqvae=module.apply_gradients(optimizers["vqvae"], grads, codebook))
    return new_state, {"loss": loss, **metrics, **code_usage(indices, vqvae.num_codes)}

  return train_step


def make_generate(models, config):
  vqvae = models["vqvae"]

  def generate(state: TrainState, key, labels):
    """len(labels) decodings [num, H, W, C] in model space of code grids drawn uniformly at
    random from the codebook. There is no learnt prior here (the paper fits a PixelCNN over
    the codes), so these show what the codes decode to, not samples of the data; the labels
    only set how many."""
    h, w = vqvae.latent_shape
    indices = jax.random.randint(key, (labels.shape[0], h, w), 0, vqvae.num_codes)
    decoded = vqvae.apply(state.modules["vqvae"].variables(), indices, method=vqvae.decode_indices)
    return jnp.clip(decoded, -1.0, 1.0)

  return generate


def make_reconstruct(models, config):
  """reconstruct(state, x) -> decodings of x's nearest codes, in model space (no update)."""
  vqvae = models["vqvae"]

  def reconstruct(state: TrainState, x, labels=None):
    decoded, _, _ = vqvae.apply(state.modules["vqvae"].variables(), x, train=False)
    return jnp.clip(decoded, -1.0, 1.0)

  return reconstruct


def make_snapshots(models, config):
  generate = make_generate(models, config)
  reconstruct = make_reconstruct(models, config)

  def snapshots(state: TrainState, batch, key):
    """Decoded random codes, and inputs beside their reconstructions."""
    x = batch["x"]
    half = x.shape[0] // 2
    return {"samples": generate(state, key, jnp.zeros(x.shape[0], jnp.int32)),
            "reconstructions": alternate(x, reconstruct(state, x[:half]))}

  return snapshots


def make_functions(models, config):
  return {"generate": make_generate(models, config),
          "reconstruct": make_reconstruct(models, config)}
