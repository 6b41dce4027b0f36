"""Trains a character-level LSTM on a UTF-8 text file.

    python train.py                          # the Tang poetry corpus, default recipe (~3 min on 2 cores with AMX)
    python train.py --input tang --name tang # the Complete Tang Poems, with titles: whole poems
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
import typing

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

import cli
import corpora
import distribute
import model as model_lib
import monitor
import poem_metrics
import read_utils

# Flags first, as in every absl app. Defaults are the recipe measured in the README.
flags.DEFINE_string("input", None, "UTF-8 text file to learn from, or a built-in corpus downloaded on first use: "
                    "poetry (the default: the original project's couplets) or tang (the Complete Tang Poems, with "
                    "titles; its recipe in corpora.RECIPES sets the flags not given)")
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
flags.DEFINE_float("grad_clip", 5.0, "clip gradients to this global norm (0: no clipping)", lower_bound=0)
flags.DEFINE_integer("max_vocab", 0, "keep only the most frequent characters (0: keep all)", lower_bound=0)
flags.DEFINE_float("val_fraction", 0.05, "fraction of lines held out for validation, in [0, 0.5]; whole records "
                   "instead in a text of records separated by empty lines, such as tang's poems (read_utils.split_kind)",
                   lower_bound=0, upper_bound=0.5)
flags.DEFINE_integer("eval_every", 1300, "validate every this many steps (and at the end)", lower_bound=1)
flags.DEFINE_integer("save_every_n", 1300, "checkpoint every this many steps (and at the end)", lower_bound=1)
flags.DEFINE_integer("eval_poems", 8, "poems sampled from each checkpoint, shown and scored in TensorBoard (0: none)", lower_bound=0)
flags.DEFINE_float("eval_temperature", 0.8, "sampling temperature of those poems", lower_bound=0)
flags.DEFINE_integer("log_every_n", 500, "log training loss every this many steps", lower_bound=1)
flags.DEFINE_integer("max_to_keep", 3, "checkpoints kept on disk", lower_bound=1)
flags.DEFINE_integer("seed", 0, "random seed for initialisation and dropout")
flags.DEFINE_enum("precision", "auto", ["auto", "float32", "bfloat16"], "training arithmetic: bfloat16 is mixed precision "
                  "(float32 weights); auto: bfloat16 on a CPU with AMX, else float32")
flags.DEFINE_integer("eval_chars", 1_000_000, "validate on at most this many held-out characters (keeps huge corpora quick)", lower_bound=2)
flags.DEFINE_string("cache_dir", read_utils.default_cache_dir(), "where encoded corpora are kept (safe to delete)")
flags.DEFINE_integer("steps_per_execution", model_lib.STEPS_PER_CALL, "training steps per compiled call, as in Keras' compile(); "
                     "a call ends early at a step that logs, validates or saves, and Ctrl-C waits for it", lower_bound=1)
# Scaling out (README: "Training on several GPUs or machines").
flags.DEFINE_enum("strategy", "default", distribute.STRATEGIES, "tf.distribute strategy: one device, all local GPUs, "
                  "workers from TF_CONFIG, or a TPU; --batch_size is the global batch, split over the replicas")
flags.DEFINE_string("tpu", "", "with --strategy tpu: the TPU's name or grpc:// address (empty: a local TPU)")
flags.DEFINE_integer("cpu_devices", 1, "split the CPU into this many devices, to try --strategy mirrored without GPUs", lower_bound=1)
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
SCORER_CHARS = 5_000_000  # the copy rate of sampled poems is judged against this much training text


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
    strategy = distribute.make_strategy(FLAGS.strategy, FLAGS.tpu, FLAGS.cpu_devices)  # before other TF work
    scratch = None if distribute.is_chief(strategy) else distribute.scratch_dir(strategy)
    try:
        train_with(strategy, scratch)
    finally:
        if scratch:
            distribute.remove_scratch(scratch)


def train_with(strategy, scratch):
    """Training under a strategy; scratch is None for the chief, which alone keeps what it writes."""
    chief = scratch is None
    checkpoint_dir = FLAGS.checkpoint_dir or os.path.join("checkpoints", FLAGS.name)
    logdir = FLAGS.logdir or os.path.join(checkpoint_dir, "logs")
    if os.path.realpath(logdir) == os.path.realpath(checkpoint_dir):
        # Both would keep a "checkpoint" file there: the run's and the projector's embedding's.
        raise read_utils.InputError(f"--logdir {logdir} is the checkpoint directory; leave it out to log to {checkpoint_dir}/logs")
    config_path = os.path.join(checkpoint_dir, "config.json")
    vocab_path = os.path.join(checkpoint_dir, "vocab.json")
    saved, saved_vocab = load_saved_run(config_path, vocab_path)
    saved_name = saved and saved.get("corpus", {}).get("name")  # a resumed run keeps its built-in corpus
    input_name = FLAGS.input or saved_name or corpora.DEFAULT
    if saved:
        adopt_saved_settings(saved)
        recipe = saved.get("corpus", {}).get("recipe", {})
    else:
        recipe = apply_recipe(corpora.RECIPES.get(input_name, {}))
    if FLAGS.precision == "auto":  # config.json keeps the choice, so a resumed run keeps it too
        FLAGS.precision = model_lib.auto_precision()
    replicas = strategy.num_replicas_in_sync
    if FLAGS.batch_size % replicas:
        raise read_utils.InputError(
            f"--batch_size {FLAGS.batch_size} does not split evenly over {replicas} replicas; use a multiple of {replicas}"
        )
    corpus = corpora.resolve(input_name, FLAGS.cache_dir)
    read_utils.check_text_file(corpus)  # before hashing it, for a clear error
    corpus_sha256 = read_utils.sha256_of(corpus)
    cache_dir = os.path.join(scratch, "corpus") if scratch else os.path.join(FLAGS.cache_dir, corpus_sha256[:16])
    data = load_corpus(corpus, saved_vocab, corpus_sha256, cache_dir)
    vocab = data.vocab
    reader = read_utils.StreamReader(data.train_ids, FLAGS.batch_size, FLAGS.seq_length)
    config = model_lib.ModelConfig(vocab_size=len(vocab), **{k: FLAGS[k].value for k in MODEL_FLAGS})
    logging.info(
        "corpus %s: %s training and %s validation characters (whole %s held out), vocabulary %d, %d windows per epoch, "
        "%d replica(s), %s",
        corpus, f"{len(data.train_ids):,}", f"{len(data.val_ids):,}", data.split, len(vocab), reader.windows_per_epoch,
        replicas, FLAGS.precision,
    )

    keras.utils.set_random_seed(FLAGS.seed)
    with strategy.scope():
        net = model_lib.build_model(config, FLAGS.precision)
        optimizer = make_optimizer()
        optimizer.build(net.trainable_variables)  # slots must exist before a restore fills them
    # The streams' LSTM states as of the last save, so a resumed run continues them exactly.
    states = [tf.Variable(state, trainable=False) for state in model_lib.zero_states(config, FLAGS.batch_size)]
    # optimizer.iterations is the step and, one window per step, the reader position too.
    checkpoint = model_lib.weights_checkpoint(net, optimizer=optimizer, lstm_states=states)
    save_dir = scratch or checkpoint_dir
    with writing(save_dir):
        os.makedirs(save_dir, exist_ok=True)
        manager = tf.train.CheckpointManager(checkpoint, save_dir, max_to_keep=FLAGS.max_to_keep)
    latest = tf.train.latest_checkpoint(checkpoint_dir)  # every worker resumes from the chief's
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        logging.info("resumed from %s at step %d", latest, int(optimizer.iterations.numpy()))
    else:
        model_lib.init_output_bias(net, data.counts)
    if saved and saved.get("corpus", {}).get("sha256") != corpus_sha256:
        logging.warning("%s is not the corpus this run started on; training goes on with it", corpus)
    projector = evaluator = sampler = None
    if chief:
        name = input_name if input_name in corpora.NAMES else None
        record = run_config(config, corpus, corpus_sha256, name, data.split, recipe)
        with writing(checkpoint_dir):
            vocab.save(vocab_path)
            read_utils.write_json_atomic(config_path, record)
        with writing(logdir):
            monitor.log_run_config(logdir, record)
            projector = monitor.EmbeddingProjector(logdir, net, vocab) if config.use_embedding else None
        if len(data.val_ids) > 1:
            windows = read_utils.EvalWindows(data.val_ids, 16, FLAGS.seq_length, max_chars=FLAGS.eval_chars)
            evaluator = model_lib.Evaluator(config, windows)
        if FLAGS.eval_poems:
            scorer = poem_metrics.PoemScorer.from_training_text(vocab.decode(data.train_ids[:SCORER_CHARS]))
            sampler = monitor.PoemSampler(config, vocab, FLAGS.eval_poems, FLAGS.eval_temperature, FLAGS.seed, scorer,
                                          records=data.split == read_utils.RECORDS)
    run = Run(strategy, net, optimizer, states, manager, projector)
    run_training(run, reader, evaluator, logdir if chief else None, sampler)


def load_corpus(corpus, saved_vocab, sha256, cache_dir):
    """The encoded corpus (read_utils.Corpus); a resumed run keeps its saved vocabulary."""
    data = read_utils.encode_corpus(corpus, cache_dir, FLAGS.val_fraction, saved_vocab, FLAGS.max_vocab, sha256)
    if data.unseen and not FLAGS.max_vocab:
        raise read_utils.InputError(
            f"{corpus} has {len(data.unseen)} characters that the run's saved vocabulary lacks "
            f"(e.g. {''.join(data.unseen[:10])!r}); train on it under a new --name"
        )
    return data


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
    return model_lib.Adam(learning_rate=schedule)


def run_config(config, corpus, corpus_sha256, name, split, recipe):
    """config.json: what sample.py and evaluate.py need, and what a resumed run keeps.

    The corpus section also holds its built-in name (None for a path), how validation split it
    (read_utils.LINES or RECORDS) and the flags its recipe set.
    """
    training = {k: FLAGS[k].value for k in READER_FLAGS + RECIPE_FLAGS}
    return {
        "format": CONFIG_FORMAT,
        "model": config.to_json(),
        "training": training,
        "corpus": {"path": os.path.abspath(corpus), "sha256": corpus_sha256, "name": name, "split": split,
                   "recipe": recipe},
    }


class Run(typing.NamedTuple):
    """What the training loop works on and saves."""

    strategy: tf.distribute.Strategy
    net: keras.Model
    optimizer: keras.optimizers.Optimizer
    states: list  # variables holding the streams' LSTM states at the last save
    manager: tf.train.CheckpointManager
    projector: monitor.EmbeddingProjector | None


class StopRequest:
    """Ctrl-C or SIGTERM asks the loop to finish its call (--steps_per_execution), save and stop; a second one stops at once."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGINT, self)
        signal.signal(signal.SIGTERM, self)

    def __call__(self, signum, frame):
        if self.requested:
            sys.exit(f"{os.path.basename(sys.argv[0])}: stopped without saving; the last checkpoint is kept")
        self.requested = True


def run_training(run, reader, evaluator, logdir, sampler):
    """The loop: train, log, validate, checkpoint. logdir None writes no logs (a non-chief worker)."""
    strategy, optimizer = run.strategy, run.optimizer
    train_steps = model_lib.make_train_steps(run.net, optimizer, FLAGS.grad_clip, strategy)
    writers = {
        name: tf.summary.create_file_writer(os.path.join(logdir, name)) if logdir else tf.summary.create_noop_writer()
        for name in ("train", "validation")
    }
    start = int(optimizer.iterations.numpy())
    if start >= FLAGS.max_steps:
        logging.info("already at step %d of --max_steps %d; raise --max_steps to train more", start, FLAGS.max_steps)
    progbar = keras.utils.Progbar(FLAGS.max_steps, stateful_metrics=["loss", "chars/s", "val_loss"])
    progbar.update(start)
    chars_per_step = reader.batch_size * reader.seq_length
    tick, tick_step = time.perf_counter(), start
    states = distribute.split_batch(strategy, [tf.convert_to_tensor(state) for state in run.states])
    event_intervals = (FLAGS.log_every_n, FLAGS.eval_every, FLAGS.save_every_n)  # calls end where these act
    calls = read_utils.call_plan(start, FLAGS.max_steps, FLAGS.steps_per_execution, event_intervals)
    stop = StopRequest()
    try:
        for x, y, starts_epoch in reader.dataset(calls):
            losses, grad_norms, states = train_steps(*distribute.split_batch(strategy, [x, y]), states, starts_epoch)
            step, losses = int(optimizer.iterations.numpy()), losses.numpy()
            if not np.isfinite(losses).all():
                bad = int(np.argmin(np.isfinite(losses)))  # the call's first step with a non-finite loss
                cli.fail(
                    f"the training loss became {losses[bad]} at step {step - len(losses) + 1 + bad}; stopped without "
                    f"saving, so the last good checkpoint is kept; resume with a lower --learning_rate (now {FLAGS.learning_rate})"
                )
            loss, grad_norm = float(losses[-1]), float(grad_norms[-1])
            values = [("loss", loss)]
            if step % FLAGS.log_every_n == 0 or step == FLAGS.max_steps:
                now = time.perf_counter()
                speed = (step - tick_step) * chars_per_step / (now - tick)
                tick, tick_step = now, step
                values.append(("chars/s", speed))
                with writers["train"].as_default(step=step):
                    tf.summary.scalar("loss", loss)
                    tf.summary.scalar("learning_rate", float(optimizer.learning_rate.numpy()))
                    tf.summary.scalar("grad_norm", grad_norm)
                    tf.summary.scalar("chars_per_second", speed)
            if evaluator and (step % FLAGS.eval_every == 0 or step == FLAGS.max_steps):
                paused = time.perf_counter()
                val_loss = evaluator.loss(run.net)
                values.append(("val_loss", val_loss))
                with writers["validation"].as_default(step=step):
                    tf.summary.scalar("loss", val_loss)
                    tf.summary.scalar("bits_per_char", val_loss / math.log(2))
                    tf.summary.scalar("perplexity", math.exp(val_loss) if val_loss < 88 else math.inf)  # float32 range
                logging.info("step %d: validation loss %.4f nats/char, %.4f bits/char", step, val_loss, val_loss / math.log(2))
                tick += time.perf_counter() - paused  # validation time is not training speed
            if step % FLAGS.save_every_n == 0 or step == FLAGS.max_steps:
                paused = time.perf_counter()
                save_checkpoint(run, states, step)
                if sampler:
                    with writers["validation"].as_default():
                        sampler.log(run.manager.latest_checkpoint, step)
                tick += time.perf_counter() - paused  # nor is sampling poems
            progbar.update(step, values)
            if stop.requested:
                print(file=sys.stderr)
                logging.info("interrupted at step %d: saving a checkpoint", step)
                break
    finally:
        for writer in writers.values():
            writer.flush()
    step = int(optimizer.iterations.numpy())
    if run.manager.latest_checkpoint is None or not run.manager.latest_checkpoint.endswith(f"-{step}"):
        save_checkpoint(run, states, step)
    logging.info("checkpoint %s", run.manager.latest_checkpoint)


def save_checkpoint(run, states, step):
    """A checkpoint of the step with the streams' current states, and the projector's embedding."""
    for variable, value in zip(run.states, distribute.join_batch(run.strategy, states)):
        variable.assign(value)
    with writing(run.manager.directory):
        run.manager.save(checkpoint_number=step)
        if run.projector:
            run.projector.save(step)


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
        explicit = given(key)
        if not explicit:
            FLAGS[key].value = previous[key]
        elif key not in RECIPE_FLAGS and FLAGS[key].value != previous[key]:
            raise read_utils.InputError(
                f"--{key}={FLAGS[key].value} differs from the saved run's {previous[key]}; "
                "drop the flag to resume, or start a new run with another --name"
            )


def apply_recipe(recipe):
    """Gives the flags that the command line leaves out the values of a built-in corpus' recipe
    (corpora.RECIPES); returns the values it set, which config.json records."""
    applied = {key: value for key, value in recipe.items() if not given(key)}
    for key, value in applied.items():
        FLAGS[key].value = value
    return applied


def given(key):
    """True when the command line sets flag key (dropout also through --train_keep_prob)."""
    return FLAGS[key].present or (key == "dropout" and FLAGS["train_keep_prob"].present)


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
