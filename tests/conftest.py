import collections
import fcntl
import glob
import os
import random
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CHARS = "春花秋月夜风山水云雨江天人日明白"

# Tests that run the entry points as processes, or read a toy run that train.py trained first, carry
# the mark "process" (these modules and fixtures, or the mark written on a test); `pytest -m "not
# process"` is the fast tier.
PROCESS_MODULES = {"test_robustness", "test_end_to_end", "test_tensorboard", "test_distribute"}
PROCESS_FIXTURES = {"trained_run"}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.module.__name__ in PROCESS_MODULES or PROCESS_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.process)


def couplets(n, seed=0, chars=CHARS):
    """n lines of the corpus' form: five characters of chars, '，', five characters, '。'."""
    rng = random.Random(seed)
    clause = lambda: "".join(rng.choice(chars) for _ in range(5))  # noqa: E731
    return "".join(f"{clause()}，{clause()}。\n" for _ in range(n))


@pytest.fixture(scope="session", autouse=True)
def corpus_cache(tmp_path_factory):
    """Encoded corpora go to a cache of the test session's own, not the user's ~/.cache/charrnn."""
    path = tmp_path_factory.mktemp("xdg_cache")
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(path)  # the entry points run as subprocesses and inherit it
    yield path / "charrnn"
    if previous is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture
def toy_corpus(tmp_path):
    path = tmp_path / "toy.txt"
    path.write_text(couplets(600), encoding="utf-8")
    return str(path)


def run_script(script, *args, check=True, cwd=ROOT):
    """Runs an entry point as a user would; returns the CompletedProcess."""
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


# The toy corpora are small, so train.py would give them the small recipe (recipes.py); the tests
# of everything else pin its flags to train.py's defaults, and test_small_corpora.py tests the recipe.
SMALL_RECIPE_PINNED = ["--dropout", 0.1, "--max_epochs", 0, "--eval_every", 1300, "--save_every_n", 1300]
TINY_MODEL = ["--lstm_size", 32, "--embedding_size", 16, "--batch_size", 8, "--seq_length", 16, *SMALL_RECIPE_PINNED]


def train_toy_run(root, lines, *args, chars=CHARS):
    """Writes a toy corpus of couplets of chars under root and trains a tiny run on it through train.py.

    Returns (run directory, corpus path).
    """
    corpus = root / "toy.txt"
    corpus.write_text(couplets(lines, chars=chars), encoding="utf-8")
    run_dir = root / "run"
    run_script("train.py", "--input", corpus, "--checkpoint_dir", run_dir, *TINY_MODEL, *args)
    return run_dir, corpus


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A toy run trained once through train.py, shared by the tests that only read it: the first
    pytest-xdist worker to ask trains it, under a lock, in the directory the workers share."""
    # A worker's directory sits in its session's. Without xdist the parent holds earlier sessions,
    # whose run must not be reused.
    session_dir = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        session_dir = session_dir.parent
    shared = session_dir / "trained_run"
    shared.mkdir(exist_ok=True)
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / "done").exists():
            train_toy_run(shared, 600, "--max_steps", 300, "--warmup_steps", 10, "--learning_rate", 0.01,
                          "--eval_every", 100, "--save_every_n", 100)
            (shared / "done").touch()
    return str(shared / "run"), str(shared / "toy.txt")


def summaries(run_dir):
    """(step, summary value) of every summary in a run's event files."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        for record in tf.data.TFRecordDataset(path):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                yield event.step, value


def read_run(run_dir):
    """{tag: [(step, value)]} of a run's scalars and texts, texts as str."""
    import tensorflow as tf

    series = collections.defaultdict(list)
    for step, value in summaries(run_dir):
        data = tf.make_ndarray(value.tensor).item()
        series[value.tag].append((step, data.decode() if isinstance(data, bytes) else data))
    return series
