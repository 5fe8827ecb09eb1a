"""benchmarks/compare.py's results file: one block per CPU kind and set of experiments."""
import importlib.util

from conftest import ROOT

spec = importlib.util.spec_from_file_location("compare", ROOT / "benchmarks" / "compare.py")
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def test_a_run_replaces_its_own_block_and_keeps_the_others(tmp_path):
  results = tmp_path / "results.md"
  results.write_text(compare.merge_block(results, "CPU A: gpt_pydoc_tiny", "| gpt | 1 |"))
  results.write_text(compare.merge_block(results, "CPU A: dcgan_mnist, vae_mnist", "| dcgan | 2 |"))
  results.write_text(compare.merge_block(results, "CPU B: dcgan_mnist, vae_mnist", "| dcgan | 3 |"))
  results.write_text(compare.merge_block(results, "CPU A: dcgan_mnist, vae_mnist", "| dcgan | 4 |"))
  assert results.read_text() == (
      "### CPU A: gpt_pydoc_tiny\n\n| gpt | 1 |\n\n"
      "### CPU B: dcgan_mnist, vae_mnist\n\n| dcgan | 3 |\n\n"
      "### CPU A: dcgan_mnist, vae_mnist\n\n| dcgan | 4 |\n")
