"""What a toy run shows in TensorBoard: its event files, its projector files, and the real server."""

import json
import math
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.projector import ProjectorConfig

import monitor
from conftest import CHARS, TINY_MODEL, read_run, run_script, summaries, train_toy_run

STEPS, LOG_EVERY, EVAL_EVERY, SAVE_EVERY, POEMS = 80, 5, 20, 40, 4
TRAIN_TAGS = {"loss", "learning_rate", "grad_norm", "chars_per_second"}
VALIDATION_TAGS = {"loss", "bits_per_char", "perplexity", "poems/well_formed", "poems/copy_rate", "poems/distinct_bigrams"}


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A run on toy couplets (a learnable form) that logs often; returns its checkpoint directory."""
    run_dir, _ = train_toy_run(
        tmp_path_factory.mktemp("tensorboard"), 600, "--max_steps", STEPS, "--learning_rate", 0.01,
        "--log_every_n", LOG_EVERY, "--eval_every", EVAL_EVERY, "--save_every_n", SAVE_EVERY, "--eval_poems", POEMS,
    )
    return run_dir


def steps(points):
    return [step for step, _ in points]


def values(points):
    return np.array([value for _, value in points])


def test_training_curves_are_logged_and_the_loss_falls(toy_run):
    train = read_run(toy_run / "logs" / "train")
    assert TRAIN_TAGS <= set(train)
    for tag in TRAIN_TAGS:
        assert steps(train[tag]) == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY)), tag
        assert np.isfinite(values(train[tag])).all() and (values(train[tag]) > 0).all(), tag
    loss = values(train["loss"])
    assert loss[-3:].mean() < loss[0] - 0.2, loss


def test_validation_curves_share_the_loss_tag_and_agree(toy_run):
    validation = read_run(toy_run / "logs" / "validation")
    assert VALIDATION_TAGS <= set(validation)
    assert steps(validation["loss"]) == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    loss = values(validation["loss"])
    assert np.isfinite(loss).all() and loss[-1] < loss[0] - 0.1, loss
    np.testing.assert_allclose(values(validation["bits_per_char"]), loss / math.log(2), rtol=1e-5)
    np.testing.assert_allclose(values(validation["perplexity"]), np.exp(loss), rtol=1e-5)


def test_poems_and_their_metrics_are_logged_at_each_checkpoint(toy_run):
    validation = read_run(toy_run / "logs" / "validation")
    checkpoints = list(range(SAVE_EVERY, STEPS + 1, SAVE_EVERY))
    assert steps(validation["poems/samples"]) == checkpoints
    for _, text in validation["poems/samples"]:
        header, body = text.split("\n\n", 1)
        assert header == f"{POEMS} poems, temperature 0.8, no start string"
        lines = [line for line in body.split("\n") if line]
        assert all(line.startswith("    ") for line in lines)  # all in one code block
        assert len(lines) >= POEMS and set("".join(line[4:] for line in lines)) <= set(CHARS + "，。")
    for tag in ("poems/well_formed", "poems/copy_rate", "poems/distinct_bigrams"):
        assert steps(validation[tag]) == checkpoints
        assert ((values(validation[tag]) >= 0) & (values(validation[tag]) <= 1)).all(), tag
    # The poems improve: hardly a couplet at the first checkpoint, some at the last.
    well_formed = values(validation["poems/well_formed"])
    assert well_formed[0] < well_formed[-1], well_formed


def printed_metrics(output):
    """{label: percentage} of evaluate.py's poem metrics."""
    return {label: float(value) for label, value in re.findall(r"^([^:\n]+): ([\d.]+)%$", output, re.M)}


def test_evaluate_prints_the_metrics_tensorboard_shows_for_the_same_checkpoint(toy_run):
    result = run_script("evaluate.py", "--checkpoint_dir", toy_run, "--num_samples", POEMS)
    printed = printed_metrics(result.stdout)
    logged = read_run(toy_run / "logs" / "validation")
    for label, tag in [("well-formed lines (5-character couplets)", "poems/well_formed"),
                       ("clauses copied from the training text", "poems/copy_rate"),
                       ("distinct character bigrams", "poems/distinct_bigrams")]:
        # Printed with one decimal: a value ending in 5 may round either way in binary.
        assert printed[label] == pytest.approx(100 * logged[tag][-1][1], abs=0.051), label


def test_evaluate_skips_the_copy_rate_when_the_corpus_is_gone(toy_run, tmp_path):
    run_dir = shutil.copytree(toy_run, tmp_path / "run")
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    config["corpus"]["path"] = str(tmp_path / "moved.txt")
    (run_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
    result = run_script("evaluate.py", "--checkpoint_dir", run_dir, "--num_samples", POEMS)
    assert f"copy rate skipped: the training corpus {tmp_path / 'moved.txt'} is missing" in result.stdout
    printed = printed_metrics(result.stdout)
    metre_labels = {label for label in printed if label.startswith("of these")}  # if some poem is a 绝句 or 律诗
    assert set(printed) - metre_labels == {"well-formed lines (5-character couplets)", "distinct character bigrams"}


def test_the_run_config_is_logged_once_as_hyperparameters(toy_run):
    ((_, value),) = summaries(toy_run / "logs")
    assert value.tag == hparams_metadata.SESSION_START_INFO_TAG
    hparams = hparams_metadata.parse_session_start_info_plugin_data(value.metadata.plugin_data.content).hparams
    config = json.load(open(toy_run / "config.json", encoding="utf-8"))
    assert hparams["lstm_size"].number_value == config["model"]["lstm_size"] == 32
    assert hparams["batch_size"].number_value == 8 and hparams["use_embedding"].bool_value
    assert hparams["corpus"].string_value == config["corpus"]["path"]


def test_the_projector_shows_the_final_embedding_with_its_characters(toy_run):
    logdir = toy_run / "logs"
    config = text_format.Parse((logdir / "projector_config.pbtxt").read_text(), ProjectorConfig())
    (embedding,) = config.embeddings
    vocab = json.load(open(toy_run / "vocab.json", encoding="utf-8"))["chars"]
    labels = (logdir / embedding.metadata_path).read_text(encoding="utf-8").split("\n")[:-1]
    assert labels == [monitor.character_label(char) for char in vocab]
    assert labels[:2] == ["<unk>", repr("\n")]  # the unknown entry, then the most frequent: the line break
    latest = tf.train.latest_checkpoint(str(logdir))
    assert latest.endswith(f"embedding-{STEPS}")
    vectors = tf.train.load_checkpoint(latest).get_tensor(embedding.tensor_name)
    assert vectors.shape == (len(vocab), 16)
    trained = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(toy_run)))
    assert any(np.array_equal(vectors, trained.get_tensor(name)) for name, shape
               in trained.get_variable_to_shape_map().items() if shape == [len(vocab), 16])


@pytest.mark.slow
def test_one_hot_runs_train_without_a_projector(toy_corpus, tmp_path):
    run_dir = tmp_path / "run"
    run_script("train.py", "--input", toy_corpus, "--checkpoint_dir", run_dir, *TINY_MODEL, "--nouse_embedding",
               "--max_steps", 5, "--eval_poems", 2)
    assert not (run_dir / "logs" / "projector_config.pbtxt").exists()
    assert steps(read_run(run_dir / "logs" / "validation")["poems/samples"]) == [5]


def test_a_logdir_that_is_the_checkpoint_directory_is_refused(toy_corpus, tmp_path):
    run_dir = tmp_path / "run"
    result = run_script("train.py", "--input", toy_corpus, "--checkpoint_dir", run_dir, "--logdir", run_dir,
                        "--max_steps", 5, check=False)
    assert result.returncode != 0 and "is the checkpoint directory" in result.stderr
    assert "Traceback" not in result.stderr and not run_dir.exists()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return json.load(response)


def wait_for_scalars(server, port, deadline):
    """The served scalar tags once TensorBoard has loaded both runs."""
    while time.monotonic() < deadline:
        assert server.poll() is None, "TensorBoard exited early"
        try:
            tags = get_json(port, "/data/plugin/scalars/tags")
            if {"train", "validation"} <= set(tags):
                return tags
        except (urllib.error.URLError, ConnectionError):
            pass  # not listening yet
        time.sleep(0.5)
    raise AssertionError("TensorBoard did not serve the runs in time")


def test_the_tensorboard_server_serves_curves_and_poems(toy_run, tmp_path):
    port = free_port()
    log = open(tmp_path / "tensorboard.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(toy_run / "logs"), "--host", "127.0.0.1",
         "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        tags = wait_for_scalars(server, port, time.monotonic() + 120)
        assert TRAIN_TAGS <= set(tags["train"]) and VALIDATION_TAGS <= set(tags["validation"])
        losses = get_json(port, "/data/plugin/scalars/scalars?run=validation&tag=loss")
        assert [step for _, step, _ in losses] == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
        assert get_json(port, "/data/plugin/text/tags") == {"validation": ["poems/samples"]}
        samples = get_json(port, "/data/plugin/text/text?run=validation&tag=poems/samples")
        assert [sample["step"] for sample in samples] == list(range(SAVE_EVERY, STEPS + 1, SAVE_EVERY))
        html = samples[-1]["text"]
        assert "temperature 0.8" in html and "<pre><code>" in html and set(CHARS) & set(html)
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=15)
        log.close()
