"""Trains a character-level LSTM on a UTF-8 text file.

    python train.py                          # the Tang poetry corpus, default recipe (~10 min on 2 cores)
    python train.py --input my.txt --name my # any UTF-8 text
    tensorboard --logdir checkpoints         # watch it learn

Running it again with the same --name resumes from the latest checkpoint.
"""

import contextlib
import json
import math
import os
import signal
import sys
import time

import keras
import tensorflow as tf
from absl import app, flags, logging

import cli
import model as model_lib
import monitor
import poem_metrics
import read_utils

# Flags first, as in every absl app. Defaults are the recipe measured in the README.
flags.DEFINE_string("input", None, "UTF-8 text file to learn from (default: the Tang poetry corpus in data/)")
flags.DEFINE_string("name", "default", "run name: checkpoints go to checkpoints/<name>")
flags.DEFINE_string("checkpoint_dir", None, "checkpoint directory (default: checkpoints/<name>)")
flags.DEFINE_string("logdir", None, "TensorBoard log directory (default: <checkpoint_dir>/logs)")
flags.DEFINE_integer("max_steps", 6000, "total training steps (one window of every stream each)", lower_bound=1)
flags.DEFINE_integer("batch_size", 32, "parallel streams per batch", lower_bound=1)
flags.DEFINE_integer("seq_length", 26, "characters per window (truncated backprop length)", lower_bound=1)
flags.DEFINE_integer("lstm_size", 192, "units in each LSTM layer", lower_bound=1)
flags.DEFINE_integer("num_layers", 1, "stacked LSTM layers", lower_bound=1)
flags.DEFINE_integer("embedding_size", 128, "character embedding width", lower_bound=1)
flags.DEFINE_boolean("use_embedding", True, "learn an embedding; false feeds one-hot vectors (small alphabets)")
flags.DEFINE_float("dropout", 0.1, "dropout after each LSTM layer, in [0, 1)")
flags.DEFINE_float("learning_rate", 0.008, "peak Adam learning rate", lower_bound=0)
flags.DEFINE_integer("warmup_steps", 100, "steps of linear learning-rate warmup", lower_bound=0)
flags.DEFINE_float("min_lr_fraction", 0.05, "cosine decay ends at this fraction of the peak rate", lower_bound=0, upper_bound=1)
flags.DEFINE_float("grad_clip", 5.0, "clip gradients to this global norm", lower_bound=0)
flags.DEFINE_integer("max_vocab", 0, "keep only the most frequent characters (0: keep all)", lower_bound=0)
flags.DEFINE_float("val_fraction", 0.05, "fraction of lines held out for validation, in [0, 0.5]", lower_bound=0, upper_bound=0.5)
flags.DEFINE_integer("eval_every", 1300, "validate every this many steps (and at the end)", lower_bound=1)
flags.DEFINE_integer("save_every_n", 1300, "checkpoint every this many steps (and at the end)", lower_bound=1)
flags.DEFINE_integer("eval_poems", 8, "poems sampled from each checkpoint, shown and scored in TensorBoard (0: none)", lower_bound=0)
flags.DEFINE_float("eval_temperature", 0.8, "sampling temperature of those poems", lower_bound=0)
flags.DEFINE_integer("log_every_n", 500, "log training loss every this many steps", lower_bound=1)
flags.DEFINE_integer("max_to_keep", 3, "checkpoints kept on disk", lower_bound=1)
flags.DEFINE_integer("seed", 0, "random seed for initialisation and dropout")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "training arithmetic: bfloat16 is mixed precision (float32 weights)")
# The original project's flag names, so its README commands run unchanged.
flags.DEFINE_alias("input_file", "input")
flags.DEFINE_alias("num_seqs", "batch_size")
flags.DEFINE_alias("num_steps", "seq_length")
flags.DEFINE_float("train_keep_prob", None, "original name: keep probability, i.e. 1 - --dropout")
flags.register_validator("dropout", lambda v: 0 <= v < 1, "--dropout must be in [0, 1)")
flags.register_validator("train_keep_prob", lambda v: v is None or 0 < v <= 1, "--train_keep_prob must be in (0, 1]")
FLAGS = flags.FLAGS

# Flags that fix the model's shape or the reader's layout: a resumed run must keep them.
MODEL_FLAGS = ("lstm_size", "num_layers", "embedding_size", "use_embedding", "dropout")
READER_FLAGS = ("batch_size", "seq_length", "max_vocab", "val_fraction")
# The rest of the recipe: a resumed run keeps it unless a flag says otherwise.
RECIPE_FLAGS = ("max_steps", "learning_rate", "warmup_steps", "min_lr_fraction", "grad_clip", "seed", "precision")
CONFIG_FORMAT = 1


class Stop(Exception):
    """SIGTERM: stop like Ctrl-C, saving a checkpoint first."""


def main(argv):
    del argv
    cli.quiet_library_info()
    try:
        train()
    except read_utils.InputError as e:
        cli.fail(e)


def train():
    if FLAGS.train_keep_prob is not None:
        FLAGS.dropout = 1.0 - FLAGS.train_keep_prob
    checkpoint_dir = FLAGS.checkpoint_dir or os.path.join("checkpoints", FLAGS.name)
    logdir = FLAGS.logdir or os.path.join(checkpoint_dir, "logs")
    if os.path.realpath(logdir) == os.path.realpath(checkpoint_dir):
        # Both would keep a "checkpoint" file there: the run's and the projector's embedding's.
        raise read_utils.InputError(f"--logdir {logdir} is the checkpoint directory; leave it out to log to {checkpoint_dir}/logs")
    config_path = os.path.join(checkpoint_dir, "config.json")
    vocab_path = os.path.join(checkpoint_dir, "vocab.json")
    saved, saved_vocab = load_saved_run(config_path, vocab_path)
    if saved:
        adopt_saved_settings(saved)
    corpus = FLAGS.input or read_utils.default_corpus_path()
    vocab, train_text, train_ids, val_ids = load_corpus(corpus, saved_vocab)
    reader = read_utils.StreamReader(train_ids, FLAGS.batch_size, FLAGS.seq_length)
    config = model_lib.ModelConfig(vocab_size=len(vocab), **{k: FLAGS[k].value for k in MODEL_FLAGS})
    logging.info(
        "corpus %s: %s training and %s validation characters, vocabulary %d, %d windows per epoch",
        corpus, f"{len(train_ids):,}", f"{len(val_ids):,}", len(vocab), reader.windows_per_epoch,
    )

    keras.utils.set_random_seed(FLAGS.seed)
    net = model_lib.build_model(config, FLAGS.batch_size, FLAGS.precision)
    optimizer = make_optimizer()
    optimizer.build(net.trainable_variables)  # slots must exist before a restore fills them
    # optimizer.iterations is the step and, one window per step, the reader position too.
    checkpoint = model_lib.weights_checkpoint(net, optimizer=optimizer, lstm_states=model_lib.lstm_states(net))
    with writing(checkpoint_dir):
        os.makedirs(checkpoint_dir, exist_ok=True)
        manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=FLAGS.max_to_keep)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        logging.info("resumed from %s at step %d", manager.latest_checkpoint, int(optimizer.iterations))
    else:
        model_lib.init_output_bias(net, train_ids)
    corpus_sha256 = read_utils.sha256_of(corpus)
    if saved and saved.get("corpus", {}).get("sha256") != corpus_sha256:
        logging.warning("%s is not the corpus this run started on; training goes on with it", corpus)
    record = run_config(config, corpus, corpus_sha256)
    with writing(checkpoint_dir):
        vocab.save(vocab_path)
        read_utils.write_json_atomic(config_path, record)
    with writing(logdir):
        monitor.log_run_config(logdir, record)
        projector = monitor.EmbeddingProjector(logdir, net, vocab) if config.use_embedding else None

    evaluator = None
    if len(val_ids) > 1:
        evaluator = model_lib.Evaluator(config, read_utils.EvalWindows(val_ids, 16, FLAGS.seq_length))
    sampler = None
    if FLAGS.eval_poems:
        scorer = poem_metrics.PoemScorer.from_training_text(train_text)
        sampler = monitor.PoemSampler(config, vocab, FLAGS.eval_poems, FLAGS.eval_temperature, FLAGS.seed, scorer)
    run_training(net, optimizer, reader, evaluator, manager, logdir, sampler, projector)


def load_corpus(corpus, saved_vocab):
    """(vocab, training text, training ids, validation ids); a resumed run keeps its saved vocabulary."""
    text = read_utils.read_text(corpus)
    train_text, val_text = read_utils.split_lines(text, FLAGS.val_fraction)
    vocab = saved_vocab or read_utils.Vocab.build(train_text, FLAGS.max_vocab)
    unseen = vocab.unknown_chars(train_text) if saved_vocab and not FLAGS.max_vocab else []
    if unseen:
        raise read_utils.InputError(
            f"{corpus} has {len(unseen)} characters that the run's saved vocabulary lacks "
            f"(e.g. {''.join(unseen[:10])!r}); train on it under a new --name"
        )
    return vocab, train_text, vocab.encode(train_text), vocab.encode(val_text)


def make_optimizer():
    """Adam with a short linear warmup, then cosine decay to min_lr_fraction at max_steps."""
    warmup = min(FLAGS.warmup_steps, FLAGS.max_steps - 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=FLAGS.learning_rate * (0.1 if warmup else 1.0),
        decay_steps=FLAGS.max_steps - warmup,
        alpha=FLAGS.min_lr_fraction,
        warmup_target=FLAGS.learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    return keras.optimizers.Adam(learning_rate=schedule)


def run_config(config, corpus, corpus_sha256):
    """config.json: what sample.py and evaluate.py need, and what a resumed run keeps."""
    training = {k: FLAGS[k].value for k in READER_FLAGS + RECIPE_FLAGS}
    return {
        "format": CONFIG_FORMAT,
        "model": config.to_json(),
        "training": training,
        "corpus": {"path": os.path.abspath(corpus), "sha256": corpus_sha256},
    }


def run_training(net, optimizer, reader, evaluator, manager, logdir, sampler, projector):
    """The loop: train, log, validate, checkpoint; Ctrl-C or SIGTERM saves and stops."""
    train_step = model_lib.make_train_step(net, optimizer, FLAGS.grad_clip)
    writers = {
        "train": tf.summary.create_file_writer(os.path.join(logdir, "train")),
        "validation": tf.summary.create_file_writer(os.path.join(logdir, "validation")),
    }
    start = int(optimizer.iterations)
    if start >= FLAGS.max_steps:
        logging.info("already at step %d of --max_steps %d; raise --max_steps to train more", start, FLAGS.max_steps)
    progbar = keras.utils.Progbar(FLAGS.max_steps, stateful_metrics=["loss", "chars/s", "val_loss"])
    progbar.update(start)
    chars_per_step = reader.batch_size * reader.seq_length
    tick, tick_step = time.perf_counter(), start
    signal.signal(signal.SIGTERM, raise_stop)
    try:
        for x, y, starts_epoch in reader.dataset(start, FLAGS.max_steps):
            loss, grad_norm = train_step(x, y, starts_epoch)
            step, loss = int(optimizer.iterations), float(loss)
            if not math.isfinite(loss):
                cli.fail(
                    f"the training loss became {loss} at step {step}; stopped without saving, so the last "
                    f"good checkpoint is kept; resume with a lower --learning_rate (now {FLAGS.learning_rate})"
                )
            values = [("loss", loss)]
            if step % FLAGS.log_every_n == 0 or step == FLAGS.max_steps:
                now = time.perf_counter()
                speed = (step - tick_step) * chars_per_step / (now - tick)
                tick, tick_step = now, step
                values.append(("chars/s", speed))
                with writers["train"].as_default(step=step):
                    tf.summary.scalar("loss", loss)
                    tf.summary.scalar("learning_rate", float(optimizer.learning_rate))
                    tf.summary.scalar("grad_norm", float(grad_norm))
                    tf.summary.scalar("chars_per_second", speed)
            if evaluator and (step % FLAGS.eval_every == 0 or step == FLAGS.max_steps):
                paused = time.perf_counter()
                val_loss = evaluator.loss(net)
                values.append(("val_loss", val_loss))
                with writers["validation"].as_default(step=step):
                    tf.summary.scalar("loss", val_loss)
                    tf.summary.scalar("bits_per_char", val_loss / math.log(2))
                    tf.summary.scalar("perplexity", math.exp(val_loss))
                logging.info("step %d: validation loss %.4f nats/char, %.4f bits/char", step, val_loss, val_loss / math.log(2))
                tick += time.perf_counter() - paused  # validation time is not training speed
            if step % FLAGS.save_every_n == 0 or step == FLAGS.max_steps:
                paused = time.perf_counter()
                save_checkpoint(manager, step, sampler, projector, writers["validation"])
                tick += time.perf_counter() - paused  # nor is sampling poems
            progbar.update(step, values)
    except (KeyboardInterrupt, Stop):
        print(file=sys.stderr)
        logging.info("interrupted at step %d: saving a checkpoint", int(optimizer.iterations))
    finally:
        for writer in writers.values():
            writer.flush()
    step = int(optimizer.iterations)
    if manager.latest_checkpoint is None or not manager.latest_checkpoint.endswith(f"-{step}"):
        with writing(manager.directory):
            manager.save(checkpoint_number=step)
    logging.info("checkpoint %s", manager.latest_checkpoint)


def save_checkpoint(manager, step, sampler, projector, writer):
    """A checkpoint, then what TensorBoard shows of it: its embedding, and poems sampled from it.

    Only the writes count as write errors; a failure while sampling is not a disk problem.
    """
    with writing(manager.directory):
        manager.save(checkpoint_number=step)
        if projector:
            projector.save(step)
    if sampler:
        with writer.as_default():
            sampler.log(manager.latest_checkpoint, step)


def raise_stop(signum, frame):
    raise Stop()


def load_saved_run(config_path, vocab_path):
    """(config.json contents, Vocab) of the run being resumed, or (None, None) for a new run.

    A damaged file is an error rather than a reason to start over and overwrite the run.
    """
    if not os.path.exists(config_path):
        return None, None
    try:
        with open(config_path, encoding="utf-8") as f:
            saved = json.load(f)
        saved["model"] | saved["training"]  # both sections must be there
        return saved, read_utils.Vocab.load(vocab_path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise read_utils.InputError(
            f"cannot resume from {os.path.dirname(config_path)}: config.json or vocab.json is unreadable "
            f"({type(e).__name__}: {e}); restore the files or train under a new --name"
        ) from None


def adopt_saved_settings(saved):
    """Makes the flags a user did not give take the resumed run's values.

    A model or reader flag given explicitly that contradicts the run is an error: it would
    silently change what the checkpoint means. Recipe flags (steps, learning rate, ...) may change.
    """
    previous = saved["model"] | saved["training"]
    for key in MODEL_FLAGS + READER_FLAGS + RECIPE_FLAGS:
        if key not in previous:
            continue
        explicit = FLAGS[key].present or (key == "dropout" and FLAGS["train_keep_prob"].present)
        if not explicit:
            FLAGS[key].value = previous[key]
        elif key not in RECIPE_FLAGS and FLAGS[key].value != previous[key]:
            raise read_utils.InputError(
                f"--{key}={FLAGS[key].value} differs from the saved run's {previous[key]}; "
                "drop the flag to resume, or start a new run with another --name"
            )


@contextlib.contextmanager
def writing(directory):
    """Reports a failed write (full disk, no permission) as an error that names the directory."""
    try:
        yield
    except (OSError, tf.errors.OpError) as e:
        reason = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
        reason = reason.split("}} ")[-1]  # TensorFlow prefixes the failing graph function's name
        raise read_utils.InputError(
            f"cannot write to {directory}: {reason}; free some disk space or choose a writable "
            "--checkpoint_dir / --logdir"
        ) from None


if __name__ == "__main__":
    app.run(main)
