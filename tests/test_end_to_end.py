import collections
import json
import math
import os
import re

import numpy as np
import pytest
import tensorflow as tf

import tuning
from conftest import TINY_MODEL, read_run, run_script


def files_of(directory):
    return {name: open(os.path.join(directory, name), "rb").read()
            for name in sorted(os.listdir(directory)) if os.path.isfile(os.path.join(directory, name))}


def test_run_directory_holds_config_vocab_checkpoints_and_logs(trained_run):
    run_dir, corpus = trained_run
    config = json.load(open(os.path.join(run_dir, "config.json"), encoding="utf-8"))
    vocab = json.load(open(os.path.join(run_dir, "vocab.json"), encoding="utf-8"))
    assert config["model"]["lstm_size"] == 32 and config["training"]["batch_size"] == 8
    assert config["model"]["vocab_size"] == len(vocab["chars"])
    assert config["corpus"]["path"] == os.path.abspath(corpus)
    assert tf.train.latest_checkpoint(run_dir).endswith("ckpt-300")
    assert os.listdir(os.path.join(run_dir, "logs", "train")) and os.listdir(os.path.join(run_dir, "logs", "validation"))


def test_sample_needs_no_model_flags_and_starts_with_the_prompt(trained_run):
    result = run_script("sample.py", "--checkpoint_dir", trained_run[0], "--start_string", "春", "--num_samples", 2)
    samples = result.stdout.strip().split("\n\n")
    assert len(samples) == 2
    for sample in samples:
        assert sample.startswith("春") and len(sample) > 10
        assert "<unk>" not in sample


def test_sample_learns_the_couplet_form(trained_run):
    """300 steps on a toy corpus of couplets are enough for the line structure."""
    result = run_script("sample.py", "--checkpoint_dir", trained_run[0], "--num_samples", 8, "--max_lines", 4)
    lines = [line for line in result.stdout.splitlines() if line]
    well_formed = [re.fullmatch(r"[^，。]{5}，[^，。]{5}。", line) is not None for line in lines]
    assert len(lines) == 32 and sum(well_formed) >= 0.8 * len(lines), lines


def unigram_entropy(text):
    """Nats per character of the text's own character frequencies: where an untrained model starts,
    its output bias being set to them."""
    counts = np.array(list(collections.Counter(text).values()), float)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_evaluate_gives_a_loss_that_training_brought_below_the_character_frequencies(trained_run):
    run_dir, corpus = trained_run
    result = run_script("evaluate.py", "--checkpoint_dir", run_dir, "--input", corpus)
    nats = float(re.search(r"loss: ([\d.]+) nats/char", result.stdout).group(1))
    bits = float(re.search(r"bits per character: ([\d.]+)", result.stdout).group(1))
    # The toy corpus: ten random characters of 16, then fixed punctuation, a line; the unigram
    # model pays for the punctuation's place (about 2.9 nats), a trained one only for the letters (2.1).
    assert math.isfinite(nats) and nats < unigram_entropy(open(corpus, encoding="utf-8").read()) - 0.3
    assert abs(bits - nats / math.log(2)) < 1e-3


def test_training_again_resumes_and_adds_steps_and_refuses_other_model_flags(toy_corpus, tmp_path):
    run_dir = tmp_path / "run"
    common = ["--input", toy_corpus, "--checkpoint_dir", run_dir, *TINY_MODEL]
    first = run_script("train.py", *common, "--max_steps", 20, "--log_every_n", 10, "--eval_poems", 0)
    # Not a terminal (a log file, CI): one line per --log_every_n step, no progress-bar redraws.
    output = first.stdout + first.stderr
    assert "\r" not in output and "\x1b" not in output
    assert re.findall(r"step (\d+)/20: loss [\d.]+", output) == ["10", "20"]
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(run_dir)))
    weights_at_20 = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if "weights" in k}
    result = run_script("train.py", *common, "--max_steps", 35)
    assert "resumed from" in result.stderr and "at step 20" in result.stderr
    latest = tf.train.latest_checkpoint(str(run_dir))
    assert latest.endswith("ckpt-35")
    reader = tf.train.load_checkpoint(latest)
    iterations = [k for k in reader.get_variable_to_shape_map() if "iterations" in k]
    assert iterations and reader.get_tensor(iterations[0]) == 35
    assert any((reader.get_tensor(k) != v).any() for k, v in weights_at_20.items())
    # --precision auto is saved as what it chose, so a resumed run keeps computing the same way.
    config = json.load(open(run_dir / "config.json", encoding="utf-8"))
    assert config["training"]["precision"] == tuning.training_precision(has_gpu=False)

    before = files_of(run_dir)
    result = run_script("train.py", "--input", toy_corpus, "--checkpoint_dir", run_dir, "--lstm_size", 64, check=False)
    assert result.returncode != 0
    assert "--lstm_size=64 differs from the saved run's 32" in result.stderr
    assert "Traceback" not in result.stderr
    assert files_of(run_dir) == before


def test_the_original_projects_commands_run(toy_corpus, tmp_path):
    run_script("train.py", "--input_file", toy_corpus, "--use_embedding", "--num_steps", 16, "--num_seqs", 8,
               "--lstm_size", 32, "--embedding_size", 16, "--learning_rate", 0.005, "--max_steps", 10,
               "--train_keep_prob", 0.8, "--name", "poetry", cwd=tmp_path)
    config = json.load(open(tmp_path / "checkpoints" / "poetry" / "config.json", encoding="utf-8"))
    assert config["training"]["seq_length"] == 16 and config["training"]["batch_size"] == 8
    assert abs(config["model"]["dropout"] - 0.2) < 1e-9
    result = run_script("sample.py", "--use_embedding", "--converter_path", "model/poetry/converter.pkl",
                        "--checkpoint_path", "checkpoints/poetry", "--max_length", 30, cwd=tmp_path)
    assert len(result.stdout.strip()) > 0


@pytest.mark.slow  # two runs of 120 steps
def test_bfloat16_training_follows_the_float32_curve(toy_corpus, tmp_path):
    """--precision bfloat16 is a faster path only if it learns the same: validation loss within 0.03."""
    curves = {}
    for precision in ("float32", "bfloat16"):
        run_dir = tmp_path / precision
        run_script("train.py", "--input", toy_corpus, "--checkpoint_dir", run_dir, *TINY_MODEL, "--max_steps", 120,
                   "--eval_every", 40, "--save_every_n", 120, "--eval_poems", 0, "--dropout", 0, "--precision", precision)
        curves[precision] = dict(read_run(str(run_dir / "logs" / "validation"))["loss"])
    assert sorted(curves["float32"]) == [40, 80, 120]
    assert curves["float32"][120] < curves["float32"][40] - 0.2  # it learned something to compare
    for step, loss in curves["float32"].items():
        assert abs(curves["bfloat16"][step] - loss) < 0.03, (step, loss, curves["bfloat16"][step])


def test_prose_samples_run_to_max_length_rather_than_four_lines(tmp_path):
    corpus = tmp_path / "prose.txt"
    corpus.write_text("".join(f"line {i % 7} of a play.\n" for i in range(800)), encoding="utf-8")
    run_script("train.py", "--input", corpus, "--checkpoint_dir", tmp_path / "run", *TINY_MODEL, "--max_steps", 5,
               "--eval_poems", 0)
    config = json.load(open(tmp_path / "run" / "config.json", encoding="utf-8"))
    assert config["corpus"]["clause_length"] is None
    text = run_script("sample.py", "--checkpoint_dir", tmp_path / "run", "--max_length", 200).stdout
    assert len(text.splitlines()) > 4 and len(text) <= 201
