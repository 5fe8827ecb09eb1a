"""Text datasets: a corpus split into token ids, read as windows of `block_size + 1` tokens.

  pydoc             the Python help topics that ship with CPython (`pydoc_data.topics`): their
                    texts joined in sorted key order (about 465,000 characters of English
                    technical prose), no network; the first 90% of the characters are the
                    "train" split, the last 10% "validation"
  tiny_shakespeare  tensorflow-datasets' (train, validation, test); "validation+test" is the
                    last 10% of the text, nanoGPT's validation split
  lm1b              tensorflow-datasets' One Billion Word benchmark (train, test): sentences,
                    joined with <|endoftext|> (or a newline for a tokenizer without one)

`config.dataset` holds `name`, `split`, `block_size` (the model's context: examples are windows
of block_size + 1 tokens), `tokenizer` (gen.tokenizers: `kind`, `vocab_size`, `path`),
`sha256` and `data_dir`. An example is a window's start offset, so the input pipeline's
shuffled indices are random windows drawn from the seed and the step, and a resumed run
draws the same ones.

The tokens are read at the first use of a split's examples: with a tokenizer file (the
run's own, which the workdir keeps) building an experiment reads no text, so sampling needs
no corpus. The pydoc corpus differs a little between Python versions: its sha256 is recorded
with the run (config.dataset.sha256), and a later launch on another corpus fails at once.

  python -m gen.text baselines   the compressors' bits/char on pydoc's validation split
"""
import bz2
import functools
import hashlib
import lzma
import sys
import zlib

import jax
import numpy as np
from absl import logging

from gen import UsageError, checks, data, tokenizers

TRAIN_FRACTION = 0.9  # Of the pydoc corpus's characters.
TFDS = ("tiny_shakespeare", "lm1b")
NAMES = ("pydoc", *TFDS)


def pydoc_corpus() -> str:
  """The help topics of this Python, their texts joined in sorted key order."""
  from pydoc_data import topics
  return "".join(topics.topics[key] for key in sorted(topics.topics))


def sha256(text: str) -> str:
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


def pydoc_split(split: str) -> str:
  corpus = pydoc_corpus()
  cut = int(len(corpus) * TRAIN_FRACTION)
  splits = {"train": corpus[:cut], "validation": corpus[cut:]}
  if split not in splits:
    raise UsageError(f"The pydoc corpus has the splits {sorted(splits)}, not {split!r}.")
  return splits[split]


def _tfds_documents(name: str, split: str, data_dir) -> list[str]:
  """The texts of a tfds split ("a+b" joins splits), as strings."""
  documents = []
  for part in split.split("+"):
    source = data.tfds_source(name, part, data_dir)
    for i in range(len(source)):
      text = source[i]["text"]
      documents.append(text.decode("utf-8") if isinstance(text, bytes) else str(text))
  return documents


def documents(config, split: str) -> list[str]:
  """The split's texts: one for pydoc and tiny_shakespeare, a sentence each for lm1b."""
  if config.name == "pydoc":
    return [pydoc_split(split)]
  return _tfds_documents(config.name, split, config.get("data_dir"))


def encode_documents(tokenizer, texts: list[str]) -> np.ndarray:
  """One int32 array of the texts' tokens, separated by the tokenizer's end-of-text token (a
  newline for one without)."""
  if tokenizer.eot_id is None:
    return tokenizer.encode("\n".join(texts))
  encoded = (tokenizer.encode_batch(texts) if hasattr(tokenizer, "encode_batch")
             else [tokenizer.encode(t) for t in texts])
  if len(encoded) == 1:
    return encoded[0]
  eot = np.asarray([tokenizer.eot_id], np.int32)
  return np.concatenate([part for e in encoded for part in (e, eot)][:-1])


class TextDataset(data.Dataset):
  """A split of a corpus as windows: example i is tokens[i : i + block_size + 1].

  Attributes beyond gen.data.Dataset's: `tokenizer`; `tokens` (int32 [N]) and `num_chars`
  (the split's characters), read at first use.
  """

  def __init__(self, name: str, block_size: int, tokenizer, load_text, fixed=None,
               files=None):
    fields = {"name": name, "num_classes": 0, "fixed": fixed or {}, "files": files or {},
              "spec": {"tokens": jax.ShapeDtypeStruct((block_size + 1,), np.dtype(np.int32))},
              "tokenizer": tokenizer, "_load_text": load_text}
    for key, value in fields.items():
      object.__setattr__(self, key, value)  # The dataclass is frozen.

  @functools.cached_property
  def _corpus(self) -> tuple[np.ndarray, int]:
    texts = self._load_text()
    unknown = self.tokenizer.unknown("".join(texts))
    if unknown:
      raise UsageError(f"{self.name}: the split has characters outside the training split's "
                       f"vocabulary: {''.join(unknown[:20])!r}. Use a byte-level tokenizer "
                       f"(--config.dataset.tokenizer.kind=bpe).")
    tokens = encode_documents(self.tokenizer, texts)
    window = self.spec["tokens"].shape[0]
    if len(tokens) < window:
      raise UsageError(f"{self.name} has {len(tokens)} tokens, fewer than one window of "
                       f"block_size + 1 = {window}: lower config.model.block_size.")
    return tokens, sum(map(len, texts))

  @property
  def tokens(self) -> np.ndarray:
    return self._corpus[0]

  @property
  def num_chars(self) -> int:
    return self._corpus[1]

  @property
  def num_examples(self) -> int:
    return len(self.tokens) - self.spec["tokens"].shape[0] + 1

  def read(self, idx) -> dict[str, np.ndarray]:
    window = self.spec["tokens"].shape[0]
    return {"tokens": self.tokens[np.asarray(idx)[:, None] + np.arange(window)]}

  def __repr__(self) -> str:
    return f"TextDataset({self.name}, window {self.spec['tokens'].shape[0]})"


def load(config, split: str) -> TextDataset:
  """The `split` of the text dataset `config` (a config.dataset) describes."""
  checks.at_least(config.block_size, "dataset.block_size", 1)
  fixed = {}
  if config.name == "pydoc":
    digest = sha256(pydoc_corpus())
    if config.get("sha256") and config.sha256 != digest:
      raise UsageError(
          f"This Python's pydoc corpus has sha256 {digest}, and the run was made on one with "
          f"{config.sha256} (config.dataset.sha256): the help topics differ between Python "
          f"versions. Use the Python the run was made with ({sys.version.split()[0]} is this "
          f"one), or a new --workdir.")
    fixed["dataset.sha256"] = digest
  tokenizer = tokenizers.build(config.tokenizer, lambda: documents(config, "train"))
  if config.tokenizer.get("path"):
    logging.info("Tokenizer of %s: %s (%d tokens).", config.name, config.tokenizer.path,
                 tokenizer.vocab_size)
  files = {"dataset.tokenizer.path": ("tokenizer.json", tokenizer.to_json().encode())}
  return TextDataset(config.name, config.block_size, tokenizer,
                     functools.partial(documents, config, split), fixed, files)


def compression_baselines(train: str, validation: str) -> dict[str, float]:
  """Bits per character of `validation` given `train` under zlib, bz2 and lzma (strongest
  settings): len(c(train + validation)) - len(c(train)), in bits, over len(validation)."""
  compressors = {"zlib": lambda b: zlib.compress(b, 9), "bz2": lambda b: bz2.compress(b, 9),
                 "lzma": lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME)}
  train_bytes, both = train.encode(), (train + validation).encode()
  return {name: 8 * (len(c(both)) - len(c(train_bytes))) / len(validation)
          for name, c in compressors.items()}


def main(argv):
  if argv[1:] != ["baselines"]:
    print("usage: python -m gen.text baselines", file=sys.stderr)
    return 2
  corpus = pydoc_corpus()
  print(f"pydoc corpus of Python {sys.version.split()[0]}: {len(corpus):,} characters, "
        f"{len(corpus.encode()):,} bytes, sha256 {sha256(corpus)}")
  train, validation = pydoc_split("train"), pydoc_split("validation")
  print(f"train {len(train):,} / validation {len(validation):,} characters")
  for name, bits in compression_baselines(train, validation).items():
    print(f"{name:>5}: {bits:.3f} bits/char on the validation split, given the training split")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
