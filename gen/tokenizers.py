"""Tokenizers: text <-> int32 token ids, and their files.

  CharTokenizer   one token per character of a vocabulary (the training split's characters)
  BPETokenizer    byte-level BPE through Hugging Face's `tokenizers` library: trained on a
                  corpus (`train_bpe`), or GPT-2's own from its vocab.json + merges.txt
                  (`from_gpt2_files`)

Each serialises to one JSON text (`to_json`, read back by `from_json`), which a run keeps in
its workdir so that sampling decodes without the corpus. `build(config.dataset.tokenizer,
training_text)` makes the tokenizer a config asks for.
"""
import json
import os

import numpy as np

from gen import UsageError, checks

KINDS = ("char", "bpe", "gpt2")
END_OF_TEXT = "<|endoftext|>"  # GPT-2's end-of-text token; trained BPE vocabularies have it too.


class CharTokenizer:
  """One token per character: id i is `chars[i]`. No end-of-text token."""
  kind = "char"
  eot_id = None

  def __init__(self, chars: str):
    self.chars = chars
    self._ids = {c: i for i, c in enumerate(chars)}

  @classmethod
  def from_text(cls, text: str) -> "CharTokenizer":
    """The vocabulary of `text`: its distinct characters in code-point order."""
    return cls("".join(sorted(set(text))))

  @property
  def vocab_size(self) -> int:
    return len(self.chars)

  def unknown(self, text: str) -> list[str]:
    """The characters of `text` outside the vocabulary, in order of first appearance."""
    return list(dict.fromkeys(c for c in text if c not in self._ids))

  def encode(self, text: str) -> np.ndarray:
    unknown = self.unknown(text)
    if unknown:
      shown = "".join(unknown[:20])
      raise UsageError(f"The text has {len(unknown)} character(s) outside this character-level "
                       f"vocabulary of {self.vocab_size}: {shown!r}. Use only characters of the "
                       f"training split (listed in the run's tokenizer.json).")
    return np.fromiter((self._ids[c] for c in text), np.int32, len(text))

  def decode(self, ids) -> str:
    return "".join(self.chars[i] for i in np.asarray(ids).reshape(-1) if 0 <= i < len(self.chars))

  def to_json(self) -> str:
    return json.dumps({"kind": "char", "chars": self.chars})


class BPETokenizer:
  """Byte-level BPE (any text encodes; nothing is unknown), a `tokenizers.Tokenizer`."""
  kind = "bpe"

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer
    self.eot_id = tokenizer.token_to_id(END_OF_TEXT)

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size()

  def unknown(self, text: str) -> list[str]:
    return []

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self.tokenizer.encode(text).ids, np.int32)

  def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
    """Each text's ids; the library spreads the texts over the CPU's cores."""
    return [np.asarray(e.ids, np.int32) for e in self.tokenizer.encode_batch(texts)]

  def decode(self, ids) -> str:
    return self.tokenizer.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                                 skip_special_tokens=False)

  def to_json(self) -> str:
    return self.tokenizer.to_str()


def _byte_level(model):
  """A `tokenizers.Tokenizer` with GPT-2's byte-level pre-tokenizer and decoder."""
  from tokenizers import Tokenizer, decoders, pre_tokenizers
  tokenizer = Tokenizer(model)
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  return tokenizer


def train_bpe(texts, vocab_size: int) -> BPETokenizer:
  """Byte-level BPE of at most `vocab_size` tokens (the 256 bytes, <|endoftext|> and merges)
  trained on `texts` (an iterable of strings). Deterministic for the same texts."""
  from tokenizers import models, pre_tokenizers, trainers
  tokenizer = _byte_level(models.BPE())
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tokenizer.train_from_iterator(texts, trainer)
  return BPETokenizer(tokenizer)


def from_gpt2_files(directory: str) -> BPETokenizer:
  """GPT-2's tokenizer from `directory`/vocab.json and merges.txt (as Hugging Face's GPT-2
  checkpoints ship them)."""
  from tokenizers import models
  paths = [os.path.join(directory, name) for name in ("vocab.json", "merges.txt")]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise UsageError(f"GPT-2's tokenizer needs vocab.json and merges.txt in {directory}; "
                     f"missing: {missing}.")
  return BPETokenizer(_byte_level(models.BPE.from_file(*paths)))


def from_json(text: str):
  """The tokenizer `to_json` wrote."""
  if json.loads(text).get("kind") == "char":
    return CharTokenizer(json.loads(text)["chars"])
  from tokenizers import Tokenizer
  return BPETokenizer(Tokenizer.from_str(text))


def load(path: str):
  """A tokenizer file (`to_json`'s), or a directory with GPT-2's vocab.json + merges.txt."""
  if os.path.isdir(path):
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
      path = os.path.join(path, "tokenizer.json")
    else:
      return from_gpt2_files(path)
  if not os.path.isfile(path):
    raise UsageError(f"config.dataset.tokenizer.path={path!r} does not exist: give a tokenizer "
                     f"file a run wrote (<workdir>/tokenizer.json) or a directory holding "
                     f"GPT-2's vocab.json and merges.txt.")
  with open(path) as f:
    return from_json(f.read())


def check(tokenizer_config) -> None:
  checks.one_of(tokenizer_config.kind, "dataset.tokenizer.kind", KINDS)
  if tokenizer_config.kind == "bpe" and not tokenizer_config.get("path"):
    checks.at_least(tokenizer_config.vocab_size, "dataset.tokenizer.vocab_size", 257)
  if tokenizer_config.kind == "gpt2" and not tokenizer_config.get("path"):
    raise UsageError("config.dataset.tokenizer.kind='gpt2' reads GPT-2's vocab.json and "
                     "merges.txt: set config.dataset.tokenizer.path to their directory (e.g. a "
                     "Hugging Face GPT-2 checkpoint, or a workdir gen.convert wrote).")


def build(tokenizer_config, training_texts):
  """The tokenizer of `config.dataset.tokenizer`: read from its `path` when set; otherwise
  made from `training_texts()` (a function returning the training split's texts): the
  characters of the training split ("char"), or BPE trained on it ("bpe")."""
  check(tokenizer_config)
  if tokenizer_config.get("path"):
    return load(tokenizer_config.path)
  texts = training_texts()
  if tokenizer_config.kind == "char":
    return CharTokenizer.from_text("\n".join(texts))  # Documents are joined by newlines.
  return train_bpe(texts, tokenizer_config.vocab_size)
