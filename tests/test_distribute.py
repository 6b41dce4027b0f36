"""train.py under tf.distribute: two logical CPU devices (mirrored) and two worker processes
(multi_worker) train like one device on the same data and seed, and resume."""

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_MODEL, read_run, run_script

# No dropout and a constant learning rate: replicas then differ from one device only by the
# order of floating-point sums, and a resumed run continues the same curve.
EXACT = ["--dropout", 0, "--warmup_steps", 0, "--min_lr_fraction", 1, "--learning_rate", 0.01,
         "--log_every_n", 5, "--eval_every", 15, "--save_every_n", 15, "--eval_poems", 0]
STEPS = 30
TOLERANCE = 2e-3  # nats/char


def train_args(corpus, run_dir, steps, *extra):
    return ["--input", corpus, "--checkpoint_dir", run_dir, *TINY_MODEL, *EXACT, "--max_steps", steps, *extra]


def losses(run_dir, split="train"):
    """{step: loss} from a run's TensorBoard logs."""
    return dict(read_run(os.path.join(run_dir, "logs", split))["loss"])


def assert_same_curve(run_dir, reference_dir, steps):
    for split in ("train", "validation"):
        ours, reference = losses(run_dir, split), losses(reference_dir, split)
        assert set(range(5 if split == "train" else 15, steps + 1, 5 if split == "train" else 15)) <= set(ours)
        for step, loss in ours.items():
            assert abs(loss - reference[step]) < TOLERANCE, (split, step, loss, reference[step])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from conftest import couplets

    path = tmp_path_factory.mktemp("distribute") / "toy.txt"
    path.write_text(couplets(600), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def one_device_run(corpus, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("one_device") / "run")
    run_script("train.py", *train_args(corpus, run_dir, STEPS))
    return run_dir


@pytest.mark.slow
def test_mirrored_on_two_cpu_devices_follows_one_device_and_resumes(corpus, one_device_run, tmp_path):
    run_dir = str(tmp_path / "run")
    mirrored = ["--strategy", "mirrored", "--cpu_devices", 2]
    first = run_script("train.py", *train_args(corpus, run_dir, 15, *mirrored))
    assert "2 replica(s)" in first.stderr
    # Resuming restores each replica's streams' states: the curve goes on as if never stopped.
    resumed = run_script("train.py", *train_args(corpus, run_dir, STEPS, *mirrored))
    assert "resumed from" in resumed.stderr and "at step 15" in resumed.stderr
    assert_same_curve(run_dir, one_device_run, STEPS)
    sample = run_script("sample.py", "--checkpoint_dir", run_dir, "--max_lines", 2, "--num_samples", 2)
    assert len(sample.stdout.strip().splitlines()) >= 4


REPLICA_MASKS = """
import sys
sys.path.insert(0, sys.argv[1])
import keras, tensorflow as tf
import distribute, model
strategy = distribute.make_strategy("mirrored", cpu_devices=2)
with strategy.scope():
    ours, keras_own = model.ReplicaDropout(0.5, seed=7), keras.layers.Dropout(0.5, seed=7)

@tf.function
def masks():
    ones = tf.ones([4, 64])
    return strategy.run(lambda: (ours(ones, training=True), keras_own(ones, training=True)))

ours_masks, keras_masks = (strategy.experimental_local_results(m) for m in masks())
print(bool(tf.reduce_all(ours_masks[0] == keras_masks[0])), bool(tf.reduce_any(ours_masks[0] != ours_masks[1])),
      bool(tf.reduce_all(keras_masks[0] == keras_masks[1])))
"""


def test_each_replica_draws_its_own_dropout_mask():
    """Keras' Dropout repeats one mask on every replica; ours keeps replica 0's and varies the rest."""
    result = subprocess.run([sys.executable, "-c", REPLICA_MASKS, ROOT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    same_as_keras_on_replica_0, replicas_differ, keras_repeats = result.stdout.split()
    assert same_as_keras_on_replica_0 == "True" and replicas_differ == "True"
    assert keras_repeats == "True"  # the reason for the layer; if Keras changes, it may go


def test_a_batch_that_does_not_split_over_the_replicas_is_refused(corpus, tmp_path):
    result = run_script("train.py", "--input", corpus, "--checkpoint_dir", tmp_path / "run", "--batch_size", 7,
                        "--strategy", "mirrored", "--cpu_devices", 2, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--batch_size 7 does not split evenly over 2 replicas" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()


def test_multi_worker_without_tf_config_is_a_clear_error(corpus, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--input", corpus,
                             "--checkpoint_dir", str(tmp_path / "run"), "--strategy", "multi_worker"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "TF_CONFIG" in result.stderr.strip().splitlines()[-1]


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(args, scratch):
    """Runs train.py as the 2 workers of a loopback cluster; returns their (returncode, stderr)."""
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    procs = []
    try:
        for index in range(2):
            tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
            env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), TMPDIR=str(scratch))
            procs.append(subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *map(str, args)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env))
        errors = [proc.communicate(timeout=400)[1] for proc in procs]
        return [(proc.returncode, stderr) for proc, stderr in zip(procs, errors)]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def checkpoint_dirs(root):
    return sorted({os.path.relpath(d, root) for d, _, names in os.walk(root) if "checkpoint" in names})


@pytest.mark.slow
def test_two_workers_train_like_one_device_write_one_run_and_resume(corpus, one_device_run, tmp_path):
    run_dir, scratch = tmp_path / "run", tmp_path / "tmp"
    scratch.mkdir()
    args = train_args(corpus, run_dir, 15, "--strategy", "multi_worker")
    for code, stderr in run_workers(args, scratch):
        assert code == 0, stderr[-3000:]
    args[args.index("--max_steps") + 1] = STEPS
    results = run_workers(args, scratch)
    for code, stderr in results:
        assert code == 0, stderr[-3000:]
        assert "resumed from" in stderr and "at step 15" in stderr
    # Only the chief wrote: one checkpoint directory (with its best weights, and the projector's in
    # its logs), and the other worker's temporary checkpoints are gone.
    assert checkpoint_dirs(tmp_path) == ["run", os.path.join("run", "best"), os.path.join("run", "logs")]
    assert os.listdir(scratch) == []
    # Two runs of the chief, one event file each: the other worker logged nothing.
    assert len(os.listdir(run_dir / "logs" / "train")) == 2
    assert_same_curve(str(run_dir), one_device_run, STEPS)
