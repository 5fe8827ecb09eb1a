"""Tokenizers and text datasets: round trips, files, the pydoc corpus and its splits, windows,
tfds text datasets (mock data) and the compressors' baselines."""
import zlib

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from gen import UsageError, data, text, tokenizers

PYTHON_311_SHA256 = "37d06970fc926e60c16dff401e441b84752446a36b6b64516c229fdec77e992c"


def _dataset_config(name="pydoc", block_size=16, kind="char", vocab_size=0, path="", sha256=""):
  return ml_collections.ConfigDict({
      "name": name, "split": "train", "block_size": block_size, "sha256": sha256,
      "data_dir": None, "tokenizer": {"kind": kind, "vocab_size": vocab_size, "path": path}})


def test_char_tokenizer_round_trips_and_names_unknown_characters(tmp_path):
  tokenizer = tokenizers.CharTokenizer.from_text("hello world\n")
  assert tokenizer.chars == "\n dehlorw" and tokenizer.vocab_size == 9
  ids = tokenizer.encode("world hello")
  assert ids.dtype == np.int32 and tokenizer.decode(ids) == "world hello"
  with pytest.raises(UsageError, match=r"2 character\(s\) outside .* vocabulary of 9: 'xy'"):
    tokenizer.encode("hex yo")
  (tmp_path / "t.json").write_text(tokenizer.to_json())
  assert tokenizers.load(str(tmp_path / "t.json")).chars == tokenizer.chars


def test_bpe_is_trained_to_its_size_and_reads_back_from_json_and_gpt2_files(tmp_path):
  corpus = text.pydoc_split("train")[:50_000]
  tokenizer = tokenizers.train_bpe([corpus], 400)
  assert tokenizer.vocab_size == 400 and tokenizer.eot_id is not None
  sample = "The \"while\" statement is used for repeated execution — ünïcode too."
  ids = tokenizer.encode(sample)
  assert tokenizer.decode(ids) == sample  # Byte level: any text round-trips.
  assert len(ids) < len(sample.encode()) * 0.8  # The merges compress.
  again = tokenizers.from_json(tokenizer.to_json())
  np.testing.assert_array_equal(again.encode(sample), ids)
  # As GPT-2's files: vocab.json and merges.txt, read with GPT-2's pre-tokenizer.
  tokenizer.tokenizer.model.save(str(tmp_path))
  gpt2 = tokenizers.load(str(tmp_path))
  np.testing.assert_array_equal(gpt2.encode(sample), ids)
  assert gpt2.eot_id == tokenizer.eot_id


def test_a_gpt2_tokenizer_needs_its_files(tmp_path):
  with pytest.raises(UsageError, match="needs vocab.json and merges.txt"):
    tokenizers.from_gpt2_files(str(tmp_path))
  with pytest.raises(UsageError, match=r"kind='gpt2' reads GPT-2's vocab.json"):
    tokenizers.check(ml_collections.ConfigDict({"kind": "gpt2", "vocab_size": 0, "path": ""}))


def test_the_pydoc_corpus_is_the_topics_in_key_order_split_90_10():
  from pydoc_data import topics
  corpus = text.pydoc_corpus()
  assert corpus.startswith(topics.topics[min(topics.topics)])
  train, validation = text.pydoc_split("train"), text.pydoc_split("validation")
  assert train + validation == corpus and len(train) == int(0.9 * len(corpus))
  with pytest.raises(UsageError, match="splits"):
    text.pydoc_split("test")


def test_windows_are_the_corpus_tokens_at_their_offsets_and_fix_the_corpus_hash():
  train = data.load(_dataset_config(), "train")
  validation = data.load(_dataset_config(), "validation")
  tokenizer = train.tokenizer
  assert train.spec["tokens"].shape == (17,) and train.shape == (17,)
  corpus = text.pydoc_split("train")
  assert train.num_examples == len(corpus) - 16 and train.num_chars == len(corpus)
  windows = train.read(np.array([0, 1000, train.num_examples - 1]))["tokens"]
  assert windows.dtype == np.int32 and windows.shape == (3, 17)
  assert tokenizer.decode(windows[1]) == corpus[1000:1017]
  assert tokenizer.decode(windows[2]) == corpus[-17:]
  assert validation.tokenizer.chars == tokenizer.chars  # Both from the training split.
  assert train.fixed == {"dataset.sha256": text.sha256(text.pydoc_corpus())}
  name, contents = train.files["dataset.tokenizer.path"]
  assert name == "tokenizer.json" and tokenizers.from_json(contents.decode()).chars == tokenizer.chars


def test_another_corpus_than_the_runs_fails_at_once():
  with pytest.raises(UsageError, match=r"pydoc corpus has sha256 .* made on one with 0+ "):
    data.load(_dataset_config(sha256="0" * 64), "train")


def test_a_tokenizer_file_means_no_text_is_read(tmp_path, monkeypatch):
  tokenizer = data.load(_dataset_config(), "train").tokenizer
  (tmp_path / "tokenizer.json").write_text(tokenizer.to_json())
  monkeypatch.setattr(text, "_tfds_documents", lambda *a: pytest.fail("read the corpus"))
  dataset = data.load(_dataset_config("tiny_shakespeare", path=str(tmp_path / "tokenizer.json")),
                      "train")
  assert dataset.tokenizer.chars == tokenizer.chars and dataset.spec["tokens"].shape == (17,)


@pytest.mark.parametrize("name", ["tiny_shakespeare", "lm1b"])
def test_tfds_text_datasets_read_through_data_source(name):
  with tfds.testing.mock_data(num_examples=8):
    char = data.load(_dataset_config(name), "train")
    bpe = data.load(_dataset_config(name, kind="bpe", vocab_size=300), "train")
    documents = text.documents(_dataset_config(name), "train")
    both = text.documents(_dataset_config(name), "train+test")
    char_tokens, bpe_tokens = char.tokens, bpe.tokens  # Read at first use.
  assert len(documents) == 8 and len(both) == 16 and all(isinstance(d, str) for d in documents)
  assert char.tokenizer.decode(char_tokens) == "\n".join(documents)
  # BPE joins the documents with <|endoftext|>.
  assert (bpe_tokens == bpe.tokenizer.eot_id).sum() == 7
  assert bpe.tokenizer.decode(bpe_tokens) == "<|endoftext|>".join(documents)


def test_a_split_shorter_than_a_window_is_a_clear_error():
  with tfds.testing.mock_data(num_examples=1):
    dataset = data.load(_dataset_config("tiny_shakespeare", block_size=4096), "train")
    with pytest.raises(UsageError, match="fewer than one window of block_size"):
      dataset.read(np.arange(2))


def test_compression_baselines_are_code_lengths_of_the_validation_split():
  train, validation = "abc " * 2000, "abd " * 100
  results = text.compression_baselines(train, validation)
  assert results["zlib"] == 8 * (len(zlib.compress((train + validation).encode(), 9))
                                 - len(zlib.compress(train.encode(), 9))) / len(validation)
  assert set(results) == {"zlib", "bz2", "lzma"}
  if text.sha256(text.pydoc_corpus()) == PYTHON_311_SHA256:  # The numbers.
    pydoc = text.compression_baselines(text.pydoc_split("train"), text.pydoc_split("validation"))
    assert pydoc == pytest.approx({"zlib": 1.95, "bz2": 1.42, "lzma": 1.41}, abs=0.005)
