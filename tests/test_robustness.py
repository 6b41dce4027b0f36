"""Bad input gets one clear error line, a non-zero exit, no traceback, and changes no file."""

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import read_utils
from conftest import ROOT, TINY_MODEL, couplets, run_script, train_toy_run


def snapshot(directory):
    """Every file under directory with its bytes: what an error must leave as it was."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, directory)] = f.read()
    return files


def assert_clean_failure(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    last_line = result.stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in last_line, last_line


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny finished run; tests that may damage it work on a copy."""
    return train_toy_run(tmp_path_factory.mktemp("robust"), 400, "--max_steps", 10, "--eval_poems", 0)


@pytest.fixture
def run_copy(finished_run, tmp_path):
    run_dir, corpus = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy, corpus


def train_into(run_dir, *args):
    return run_script("train.py", "--checkpoint_dir", run_dir, *TINY_MODEL, "--max_steps", 12, "--eval_poems", 0,
                      *args, check=False)


# --- train.py: bad corpora --------------------------------------------------------------------

def bad_corpus(tmp_path, kind):
    path = tmp_path / f"corpus_{kind}"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "png":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    elif kind == "gz":
        path.write_bytes(gzip.compress(couplets(10).encode("utf-8")))
    elif kind == "gbk":
        path.write_bytes(couplets(300).encode("gbk"))
    elif kind == "short":
        path.write_text(couplets(2), encoding="utf-8")
    return path


@pytest.mark.parametrize("kind, message", [
    ("missing", "does not exist"),
    ("directory", "is a directory"),
    ("empty", "is empty"),
    ("png", "PNG image"),
    ("gz", "gzip archive"),
    ("gbk", "not UTF-8"),
    ("short", "fewer than one batch"),
])
def test_bad_corpus_is_refused_and_the_run_is_untouched(run_copy, tmp_path, kind, message):
    run_dir, _ = run_copy
    before = snapshot(run_dir)
    result = train_into(run_dir, "--input", bad_corpus(tmp_path, kind))
    assert_clean_failure(result, message)
    assert snapshot(run_dir) == before


def test_gbk_corpus_message_suggests_converting(tmp_path):
    result = train_into(tmp_path / "new", "--input", bad_corpus(tmp_path, "gbk"))
    assert_clean_failure(result, "GBK", "iconv")
    assert not (tmp_path / "new").exists()


def test_poem_positions_are_refused_on_a_corpus_of_lines(tmp_path):
    corpus = tmp_path / "lines.txt"
    corpus.write_text(couplets(300), encoding="utf-8")
    result = train_into(tmp_path / "new", "--input", corpus, "--poem_position")
    assert_clean_failure(result, "--poem_position needs poems separated by empty lines", "leave out --poem_position")
    assert not (tmp_path / "new").exists()


def test_windows_line_ends_and_bom_train_like_the_plain_text(tmp_path):
    text = couplets(300)
    plain, windows = tmp_path / "plain.txt", tmp_path / "windows.txt"
    plain.write_text(text, encoding="utf-8")
    windows.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))
    run_script("train.py", "--input", windows, "--checkpoint_dir", tmp_path / "run", *TINY_MODEL, "--max_steps", 2,
               "--eval_poems", 0)
    training = json.loads((tmp_path / "run" / "config.json").read_text(encoding="utf-8"))["training"]
    # The vocabulary the plain text gives, with the run's split and --min_count:
    plain_vocab = read_utils.encode_corpus(str(plain), str(tmp_path / "cache"), training["val_fraction"],
                                           min_count=training["min_count"]).vocab
    vocab = read_utils.Vocab.load(str(tmp_path / "run" / "vocab.json"))
    assert vocab.chars == plain_vocab.chars and "\r" not in vocab.chars and "\ufeff" not in vocab.chars


# --- quiet commands ---------------------------------------------------------------------------------

# What TensorFlow's C++ start-up writes to stderr (CUDA stubs, oneDNN, CPU features, absl's warning).
LIBRARY_CHATTER = ("absl::InitializeLog", "oneDNN", "cuda", "cuInit", "cpu_feature_guard", "This TensorFlow binary")


@pytest.mark.parametrize("script, args", [
    ("train.py", ["--input", "/nonexistent"]),
    ("train.py", ["--batch_size", "0"]),
    ("train.py", ["--no_such_flag"]),
    ("sample.py", ["--checkpoint_dir", "/nonexistent"]),
    ("sample.py", ["--top_p", "2"]),
    ("evaluate.py", ["--checkpoint_dir", "/nonexistent", "--input", "/nonexistent"]),
])
def test_bad_input_prints_one_line_and_no_library_lines(script, args):
    result = run_script(script, *args, check=False)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"{script}: error: ") and not result.stdout


def test_sampling_shows_no_library_start_up_lines(finished_run):
    result = run_script("sample.py", "--checkpoint_dir", finished_run[0])
    assert not [line for line in result.stderr.splitlines() if any(word in line for word in LIBRARY_CHATTER)], result.stderr
    verbose = run_script("sample.py", "--checkpoint_dir", finished_run[0], "--verbose")
    assert any(word in verbose.stderr for word in LIBRARY_CHATTER)  # what --verbose brings back


# --- flag values ------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value", [
    ("--batch_size", 0), ("--seq_length", -1), ("--lstm_size", 0), ("--num_layers", 0),
    ("--embedding_size", 0), ("--max_steps", 0), ("--dropout", 1.0), ("--dropout", -0.1),
    ("--steps_per_execution", 0),
])
def test_train_flag_out_of_range(tmp_path, flag, value):
    result = run_script("train.py", "--checkpoint_dir", tmp_path / "run", flag, value, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert flag.lstrip("-") in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--temperature", -0.5, "temperature"),
    ("--top_p", 0, "top_p"),
    ("--top_p", 1.5, "top_p"),
    ("--top_k", 100000, "top_k"),
    ("--form", "sonnet", "form"),
])
def test_sample_flag_out_of_range(finished_run, flag, value, message):
    result = run_script("sample.py", "--checkpoint_dir", finished_run[0], flag, value, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert message in result.stderr


# --- sample.py / evaluate.py on bad run directories --------------------------------------------

def damage(run_dir, how):
    if how == "missing_dir":
        shutil.rmtree(run_dir)
    elif how == "no_checkpoint":
        for name in os.listdir(run_dir):
            if name.startswith("ckpt-") or name == "checkpoint":
                os.remove(run_dir / name)
    elif how == "no_config":
        os.remove(run_dir / "config.json")
    elif how == "corrupt_config":
        (run_dir / "config.json").write_text("{not json", encoding="utf-8")
    elif how == "no_vocab":
        os.remove(run_dir / "vocab.json")
    elif how == "corrupt_vocab":
        (run_dir / "vocab.json").write_text('{"format": 1, "chars": 7}', encoding="utf-8")
    elif how == "newer_format":
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        (run_dir / "config.json").write_text(json.dumps(config | {"format": 99}), encoding="utf-8")
    elif how == "truncated_checkpoint":
        for name in os.listdir(run_dir):
            if name.endswith(".data-00000-of-00001"):
                path = run_dir / name
                path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 3])


DAMAGE = [
    ("missing_dir", "does not exist"),
    ("no_checkpoint", "no checkpoint"),
    ("no_config", "config.json"),
    ("corrupt_config", "corrupt"),
    ("no_vocab", "vocab.json"),
    ("corrupt_vocab", "corrupt"),
    ("newer_format", "newer than this code"),
    ("truncated_checkpoint", "cannot load checkpoint"),
]


@pytest.mark.parametrize("how, message", DAMAGE)
def test_sample_on_a_bad_run_directory(run_copy, how, message):
    run_dir, _ = run_copy
    damage(run_dir, how)
    before = snapshot(run_dir) if run_dir.exists() else None
    result = run_script("sample.py", "--checkpoint_dir", run_dir, check=False)
    assert_clean_failure(result, message)
    assert (snapshot(run_dir) if run_dir.exists() else None) == before


@pytest.mark.parametrize("how, message", DAMAGE)
def test_evaluate_on_a_bad_run_directory(run_copy, how, message):
    run_dir, corpus = run_copy
    damage(run_dir, how)
    result = run_script("evaluate.py", "--checkpoint_dir", run_dir, "--input", corpus, check=False)
    assert_clean_failure(result, message)


def test_sample_start_string_with_unseen_characters(finished_run):
    result = run_script("sample.py", "--checkpoint_dir", finished_run[0], "--start_string", "春我你", check=False)
    assert_clean_failure(result, "never saw", "我", "你")


# --- resuming with a mismatch --------------------------------------------------------------------

def test_resume_with_a_corpus_outside_the_vocabulary(run_copy, tmp_path):
    run_dir, _ = run_copy
    other = tmp_path / "other.txt"
    other.write_text("".join(f"{'甲乙丙丁戊'}，{'己庚辛壬癸'}。\n" for _ in range(300)), encoding="utf-8")
    before = snapshot(run_dir)
    result = train_into(run_dir, "--input", other)
    assert_clean_failure(result, "saved vocabulary lacks", "new --name")
    assert snapshot(run_dir) == before


def test_resume_with_corrupt_config(run_copy):
    run_dir, corpus = run_copy
    (run_dir / "config.json").write_text("[]", encoding="utf-8")
    before = snapshot(run_dir)
    result = train_into(run_dir, "--input", corpus)
    assert_clean_failure(result, "cannot resume")
    assert snapshot(run_dir) == before


# --- interruption -------------------------------------------------------------------------------

def start_training(run_dir, corpus, max_steps):
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "train.py"), "--input", str(corpus), "--checkpoint_dir", str(run_dir),
         *map(str, TINY_MODEL), "--max_steps", str(max_steps), "--save_every_n", "5", "--eval_every", "50",
         "--eval_poems", "0"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def latest_step(run_dir):
    import tensorflow as tf

    path = tf.train.latest_checkpoint(str(run_dir))
    return int(path.rsplit("-", 1)[1]) if path else 0


@pytest.mark.parametrize("signum", [pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGTERM])
def test_interrupt_saves_a_checkpoint_and_exits_cleanly(toy_corpus, tmp_path, signum):
    run_dir = tmp_path / "run"
    proc = start_training(run_dir, toy_corpus, 100000)
    try:
        deadline = time.time() + 120
        while latest_step(run_dir) < 5 and time.time() < deadline:
            time.sleep(0.5)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr and "interrupted at step" in stderr
    step = int(stderr.split("interrupted at step ")[1].split(":")[0])
    assert step >= 5 and latest_step(run_dir) == step


@pytest.mark.slow
def test_hard_kills_at_random_moments_never_break_resume(toy_corpus, tmp_path):
    import random

    rng = random.Random(4)
    run_dir = tmp_path / "run"
    for _ in range(4):
        proc = start_training(run_dir, toy_corpus, 60)
        time.sleep(rng.uniform(2.0, 9.0))
        proc.kill()
        proc.wait(timeout=30)
    result = run_script("train.py", "--input", toy_corpus, "--checkpoint_dir", run_dir, *TINY_MODEL,
                        "--max_steps", 60, "--save_every_n", 5, "--eval_poems", 0)
    assert latest_step(run_dir) == 60, result.stderr[-2000:]
    sample = run_script("sample.py", "--checkpoint_dir", run_dir, "--max_lines", 2)
    assert sample.stdout.strip()


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(run_copy, tmp_path):
    run_dir, corpus = run_copy
    checkpoints_before = {k: v for k, v in snapshot(run_dir).items() if k.startswith("ckpt-") or k == "checkpoint"}
    one_step_calls = tmp_path / "one_step_calls"
    shutil.copytree(run_dir, one_step_calls)
    # Adam moves every weight by about the learning rate: 1e37 overflows float32 within a step or two.
    diverging = ["--input", corpus, "--learning_rate", 1e37, "--max_steps", 40, "--save_every_n", 1000]
    result = train_into(run_dir, *diverging)
    assert_clean_failure(result, "at step", "lower --learning_rate")
    after = {k: v for k, v in snapshot(run_dir).items() if k.startswith("ckpt-") or k == "checkpoint"}
    assert after == checkpoints_before
    # The step named is the first bad one, not the end of its call of --steps_per_execution steps.
    stepwise = train_into(one_step_calls, *diverging, "--steps_per_execution", 1)
    step_of = lambda result: result.stderr.split(" at step ")[-1].split(";")[0]  # noqa: E731
    assert step_of(result) == step_of(stepwise)


def test_unwritable_checkpoint_directory_is_reported(toy_corpus, tmp_path):
    if os.geteuid() == 0:
        # root ignores permission bits; a path under a regular file cannot be created by anyone.
        blocker = tmp_path / "file"
        blocker.write_text("x")
        target = blocker / "run"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "run"
    result = train_into(target, "--input", toy_corpus)
    assert_clean_failure(result, "cannot write", str(target))


def test_full_disk_is_reported_and_nothing_is_left_half_written(toy_corpus, tmp_path):
    """A 96 kB tmpfs: the run's small files fit, its first checkpoint does not."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and tmpfs mounts to make a small disk")
    try:
        result = run_script("train.py", "--input", toy_corpus, "--checkpoint_dir", disk / "run", "--lstm_size", 256,
                            "--embedding_size", 16, "--batch_size", 8, "--seq_length", 16, "--max_steps", 20,
                            "--save_every_n", 10, "--eval_poems", 0, check=False)
        assert_clean_failure(result, "cannot write to", "No space left on device")
        assert not any(name.startswith("ckpt-10.") for name in os.listdir(disk / "run"))
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
