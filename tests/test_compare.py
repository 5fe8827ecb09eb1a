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


def test_each_gen_dtype_is_a_row_against_the_same_pytorch_runs(tmp_path, monkeypatch):
  commands = []

  def fake_run(name, command, env):
    commands.append(command)
    if name == "gen.bench":
      bf16 = "--config.model.dtype=bfloat16" in command
      return {"images_per_sec": 300.0 if bf16 else 200.0, "mfu": 0.4}
    return {"images_per_sec": 100.0, "batch_size": 128}

  monkeypatch.setattr(compare, "_run", fake_run)
  monkeypatch.setattr(compare, "versions", lambda names: "versions")
  output = tmp_path / "results.md"
  compare.main(["--experiments=dcgan_mnist", "--repeats=1", "--gen_dtypes=float32,bfloat16",
                f"--output={output}"])
  text = output.read_text()
  assert "| dcgan_mnist | 128 | images | 200 (200-200) | 100 (100-100) | 2.00x" in text
  assert "| dcgan_mnist, gen in bfloat16 | 128 | images | 300 (300-300) | 100 (100-100) | 3.00x" in text
  # One PyTorch run a repeat, beside one gen run per dtype.
  assert [c[1] for c in commands].count("-m") == 2 and len(commands) == 3
