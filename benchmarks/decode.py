"""Decoding speed: gen's cached sampler against Hugging Face `generate` on the same weights.

  python benchmarks/decode.py                          # gpt_pydoc's sizes, context 512
  python benchmarks/decode.py --experiment=gpt2_124m --batch_sizes=1 --skip_uncached
  python benchmarks/decode.py --output=benchmarks/results.md --readme=README.md

A GPT-2 of the experiment's sizes is initialised at random by `transformers`
(`GPT2LMHeadModel`, PyTorch eager, float32) and its state dict is converted to gen's parameters
with gen.convert, as a downloaded checkpoint would be. For each batch size, alternating, each
`--repeats` times, greedy decoding of `--new_tokens` tokens after a random prompt of
`--prompt_tokens` tokens is timed in:
  - gen: gen.decode's sampler (the prompt prefilled in one call, then a compiled while loop
    over the key/value cache), as `--mode=sample` runs it; its compile time is reported apart;
  - HF: `model.generate(..., do_sample=False, use_cache=True)`;
  - uncached: `model.generate(..., use_cache=False)`, which recomputes the whole sequence for
    every new token, as nanoGPT's `generate` does.
The greedy tokens of gen and HF are compared too (they agree unless two logits tie within
float32 rounding). Throughput is new tokens per second over all rows (median of the repeats).
"""
import argparse
import pathlib
import statistics
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def hf_model(config):
  import torch
  import transformers
  m = config.model
  torch.manual_seed(config.seed)
  hf_config = transformers.GPT2Config(
      vocab_size=m.vocab_size, n_positions=m.block_size, n_embd=m.n_embd, n_layer=m.n_layer,
      n_head=m.n_head, activation_function="gelu_new", layer_norm_epsilon=1e-5,
      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
      bos_token_id=None, eos_token_id=None)  # No end-of-text: every row decodes new_tokens.
  return transformers.GPT2LMHeadModel(hf_config).eval()


def gen_generate(config, model, new_tokens: int):
  """(generate(prompts) -> tokens [B, new_tokens] as NumPy, params) on the HF model's weights."""
  import jax
  import jax.numpy as jnp
  from gen import convert, decode
  from gen.models.gpt import GPT
  m = config.model
  tensors = {name: value.detach().numpy() for name, value in model.state_dict().items()}
  params = jax.device_put(convert.from_gpt2(tensors))
  gpt = GPT(m.vocab_size, m.block_size, m.n_layer, m.n_head, m.n_embd, use_bias=True)
  compiled = jax.jit(decode.make_generate(gpt, new_tokens))

  def generate(prompts: np.ndarray) -> np.ndarray:
    rows, length = prompts.shape
    out = compiled({"params": params}, jnp.asarray(prompts, jnp.int32),
                   jnp.full((rows,), length, jnp.int32), jax.random.key(0), 0.0, 1.0,
                   jnp.arange(rows, dtype=jnp.int32))
    return np.asarray(jax.block_until_ready(out["tokens"]))

  return generate


def hf_generate(model, new_tokens: int, use_cache: bool):
  import torch

  def generate(prompts: np.ndarray) -> np.ndarray:
    inputs = torch.from_numpy(prompts).long()
    with torch.no_grad():
      out = model.generate(inputs, attention_mask=torch.ones_like(inputs),
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=False, use_cache=use_cache, pad_token_id=0)
    return out[:, prompts.shape[1]:].numpy()

  return generate


def timed(fn, prompts) -> tuple[float, np.ndarray]:
  start = time.perf_counter()
  tokens = fn(prompts)
  return time.perf_counter() - start, tokens


def table(rows: list[dict], sides: list[str]) -> str:
  header = "| batch | " + " | ".join(f"{s} tokens/s" for s in sides)
  header += " | gen / HF | gen / uncached |" if "uncached" in sides else " | gen / HF |"
  lines = [header, "|" + " ---: |" * (header.count("|") - 1)]
  for row in rows:
    cells = [f"{statistics.median(row[s]):.0f}" for s in sides]
    ratios = [f"{statistics.median(row['gen']) / statistics.median(row[s]):.1f}x"
              for s in ("HF", "uncached") if s in sides]
    lines.append(f"| {row['batch']} | " + " | ".join(cells + ratios) + " |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--experiment", default="gpt_pydoc", help="a GPT experiment: its sizes")
  parser.add_argument("--block_size", type=int, default=512, help="the model's context")
  parser.add_argument("--new_tokens", type=int, default=256)
  parser.add_argument("--prompt_tokens", type=int, default=8)
  parser.add_argument("--batch_sizes", default="1,8")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--skip_uncached", action="store_true")
  parser.add_argument("--output", default="", help="also add the table to this results.md")
  parser.add_argument("--readme", default="", help="and rewrite this README's Performance blocks")
  args = parser.parse_args(argv)
  from gen import bench, cli
  cli.set_xla_defaults()
  config = cli.load_config(args.experiment)
  config.model.block_size = args.block_size
  if args.prompt_tokens + args.new_tokens > args.block_size:
    parser.error(f"--prompt_tokens + --new_tokens ({args.prompt_tokens + args.new_tokens}) is "
                 f"more than --block_size={args.block_size}")
  model = hf_model(config)
  sides = {"gen": gen_generate(config, model, args.new_tokens),
           "HF": hf_generate(model, args.new_tokens, use_cache=True)}
  if not args.skip_uncached:
    sides["uncached"] = hf_generate(model, args.new_tokens, use_cache=False)
  rng = np.random.default_rng(0)
  rows = []
  for batch in (int(b) for b in args.batch_sizes.split(",")):
    prompts = rng.integers(0, config.model.vocab_size, (batch, args.prompt_tokens))
    compile_s, _ = timed(sides["gen"], prompts)
    row = {"batch": batch, **{name: [] for name in sides}}
    tokens = {}
    for _ in range(args.repeats):
      for name, fn in sides.items():
        seconds, tokens[name] = timed(fn, prompts)
        row[name].append(batch * args.new_tokens / seconds)
    agree = float(np.mean(tokens["gen"] == tokens["HF"]))
    print(f"batch {batch}: gen compile {compile_s:.1f} s; greedy tokens equal to HF's: "
          f"{100 * agree:.1f}%; " + ", ".join(f"{n} {statistics.median(v):.0f} tokens/s"
                                              for n, v in row.items() if n != "batch"),
          file=sys.stderr, flush=True)
    rows.append(row)
  import compare
  import torch
  m = config.model
  report = (f"Greedy decoding, {args.new_tokens} new tokens after {args.prompt_tokens}, GPT-2 "
            f"of {m.n_layer} layers x {m.n_embd} ({m.n_head} heads, vocabulary {m.vocab_size}, "
            f"context {m.block_size}), float32; medians of {args.repeats} alternating runs; "
            f"HF `generate` with and without its cache, PyTorch eager with "
            f"{torch.get_num_threads()} threads; "
            f"{compare.versions(('jax', 'jaxlib', 'torch', 'transformers'))}; "
            f"`{' '.join(['python', 'benchmarks/decode.py', *(argv or sys.argv[1:])])}`."
            f"\n\n{table(rows, list(sides))}\n")
  print(report)
  if args.output:
    output = pathlib.Path(args.output)
    output.write_text(compare.merge_block(output, f"{bench.describe_cpu()}: decoding", report))
    if args.readme:
      compare.rewrite_readme(pathlib.Path(args.readme), output.read_text())


if __name__ == "__main__":
  main()
