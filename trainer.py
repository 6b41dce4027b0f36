"""Training, once train.py has checked its flags and inputs: the model, the optimizer, the compiled
training steps, validation, checkpoints and TensorBoard.

Each training call runs several steps (--steps_per_execution) in one compiled tf.function; calls end
at every step that logs, validates or saves (read_utils.call_plan). On a CPU the steps compute the
model's loss by hand (cpu_training.py); on a GPU through the Keras layers, which take cuDNN.
"""

import contextlib
import math
import os
import signal
import sys
import time
import typing

import keras
import numpy as np
import tensorflow as tf
from absl import flags, logging

import cli
import cpu_training
import distribute
import model as model_lib
import monitor
import poem_metrics
import read_utils
import run_dir
import tuning

FLAGS = flags.FLAGS  # train.py's
SCORER_CHARS = 5_000_000  # the copy rate of sampled poems is judged against this much training text


def train(inputs):
    """Trains as the flags say, from train.Inputs: a new run, or the saved one resumed."""
    strategy = distribute.make_strategy(FLAGS.strategy, FLAGS.tpu, FLAGS.cpu_devices)  # before other TF work
    if FLAGS.precision == "auto":  # config.json keeps the choice, so a resumed run keeps it too
        FLAGS.precision = tuning.training_precision(has_gpu=bool(tf.config.list_physical_devices("GPU")))
    replicas = strategy.num_replicas_in_sync
    if FLAGS.batch_size % replicas:
        raise read_utils.InputError(
            f"--batch_size {FLAGS.batch_size} does not split evenly over {replicas} replicas; use a multiple of {replicas}"
        )
    scratch = None if distribute.is_chief(strategy) else distribute.scratch_dir(strategy)
    try:
        train_with(strategy, inputs, scratch)
    finally:
        if scratch:
            distribute.remove_scratch(scratch)


def train_with(strategy, inputs, scratch):
    """Training under a strategy; scratch is None for the chief, which alone keeps what it writes."""
    chief = scratch is None
    checkpoint_dir, logdir, saved, corpus, corpus_sha256 = inputs
    saved_vocab = saved.vocab if saved else None
    cache_dir = os.path.join(scratch, "corpus") if scratch else os.path.join(FLAGS.cache_dir, corpus_sha256[:16])
    data = load_corpus(corpus, saved_vocab, corpus_sha256, cache_dir)
    vocab = data.vocab
    reader = read_utils.StreamReader(data.train_ids, FLAGS.batch_size, FLAGS.seq_length)
    config = run_dir.ModelConfig(vocab_size=len(vocab), **{k: FLAGS[k].value for k in run_dir.MODEL_FLAGS})
    logging.info(
        "corpus %s: %s training and %s validation characters, vocabulary %d, %d windows per epoch, %d replica(s), %s",
        corpus, f"{len(data.train_ids):,}", f"{len(data.val_ids):,}", len(vocab), reader.windows_per_epoch,
        strategy.num_replicas_in_sync, FLAGS.precision,
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
    if saved and saved.record.get("corpus", {}).get("sha256") != corpus_sha256:
        logging.warning("%s is not the corpus this run started on; training goes on with it", corpus)
    projector = evaluator = sampler = None
    if chief:
        # Whether the corpus is poetry, and in which form, goes to config.json (sample.py's line limit).
        scorer = poem_metrics.PoemScorer.from_training_text(vocab.decode(data.train_ids[:SCORER_CHARS]))
        record = run_config(config, corpus, corpus_sha256, scorer.clause_length)
        with writing(checkpoint_dir):
            vocab.save(os.path.join(checkpoint_dir, "vocab.json"))
            read_utils.write_json_atomic(os.path.join(checkpoint_dir, "config.json"), record)
        with writing(logdir):
            monitor.log_run_config(logdir, record)
            projector = monitor.EmbeddingProjector(logdir, net, vocab) if config.use_embedding else None
        if len(data.val_ids) > 1:
            windows = read_utils.EvalWindows(data.val_ids, 16, FLAGS.seq_length, max_chars=FLAGS.eval_chars)
            evaluator = monitor.Evaluator(config, windows)
        if FLAGS.eval_poems:
            sampler = monitor.PoemSampler(config, vocab, FLAGS.eval_poems, FLAGS.eval_temperature, FLAGS.seed, scorer)
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
    return cpu_training.Adam(learning_rate=schedule)


def run_config(config, corpus, corpus_sha256, clause_length):
    """config.json: what sample.py and evaluate.py need, and what a resumed run keeps."""
    training = {k: FLAGS[k].value for k in run_dir.READER_FLAGS + run_dir.RECIPE_FLAGS}
    return {
        "format": run_dir.CONFIG_FORMAT,
        "model": config.to_json(),
        "training": training,
        # clause_length: 5 or 7 for poetry in couplets of that form, None for other text
        "corpus": {"path": os.path.abspath(corpus), "sha256": corpus_sha256, "clause_length": clause_length},
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
    train_steps = make_train_steps(run.net, optimizer, FLAGS.grad_clip, strategy)
    writers = {
        name: tf.summary.create_file_writer(os.path.join(logdir, name)) if logdir else tf.summary.create_noop_writer()
        for name in ("train", "validation")
    }
    start = int(optimizer.iterations.numpy())
    if start >= FLAGS.max_steps:
        logging.info("already at step %d of --max_steps %d; raise --max_steps to train more", start, FLAGS.max_steps)
    progress = Progress(start, FLAGS.max_steps)
    chars_per_step = reader.batch_size * reader.seq_length
    tick, tick_step = time.perf_counter(), start
    states = distribute.split_batch(strategy, [tf.convert_to_tensor(state) for state in run.states])
    event_intervals = (FLAGS.log_every_n, FLAGS.eval_every, FLAGS.save_every_n)  # calls end where these act
    calls = read_utils.call_plan(start, FLAGS.max_steps, FLAGS.steps_per_execution, event_intervals)
    stop = StopRequest()
    try:
        for x, y, starts_epoch in window_dataset(reader, calls):
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
            logs = step % FLAGS.log_every_n == 0 or step == FLAGS.max_steps
            if logs:
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
            progress.update(step, values, logs)
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


class Progress:
    """Training progress: Keras' progress bar on a terminal; where the output goes to a file (nohup,
    CI, > train.log), one plain line at each --log_every_n step instead of the bar's redraws."""

    def __init__(self, start, total):
        self.total = total
        self.bar = None
        if sys.stdout.isatty():
            self.bar = keras.utils.Progbar(total, stateful_metrics=["loss", "chars/s", "val_loss"])
            self.bar.update(start)

    def update(self, step, values, logs):
        if self.bar:
            self.bar.update(step, values)
        elif logs:
            figures = ", ".join(f"{name} {value:,.0f}" if name == "chars/s" else f"{name} {value:.4f}" for name, value in values)
            logging.info("step %d/%d: %s", step, self.total, figures)


def save_checkpoint(run, states, step):
    """A checkpoint of the step with the streams' current states, and the projector's embedding."""
    for variable, value in zip(run.states, distribute.join_batch(run.strategy, states)):
        variable.assign(value)
    with writing(run.manager.directory):
        run.manager.save(checkpoint_number=step)
        if run.projector:
            run.projector.save(step)


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


# --- the compiled training step ------------------------------------------------------------------

def make_train_steps(net, optimizer, grad_clip, strategy, by_hand=None):
    """The compiled training call: several training steps, run on every replica of a tf.distribute strategy.

    train_steps(x, y, states, starts_epoch) -> (losses [n], gradient norms [n], new states) runs
    n = len(starts_epoch) steps, step i on the windows x[:, i], y[:, i]. x, y [streams, n, T] and
    states are per-replica values holding each replica's own streams (distribute.split_batch);
    losses and gradient norms are of the whole global batch. A step's states start over from zero
    when starts_epoch[i] says its windows start the epoch over, since the carried ones are from
    the streams' ends. The steps run in a tf.while_loop, traced once for any n: between calls the
    cores idle while Python takes the results and makes the next call.
    by_hand (default: when cpu_training.is_faster_here()) computes the losses with cpu_training
    instead of the Keras layers, which on a GPU take cuDNN.
    """
    by_hand = cpu_training.is_faster_here() if by_hand is None else by_hand
    losses_of = cpu_training.losses if by_hand else keras_losses

    def replica_step(x, y, states, starts_epoch, i):
        x, y = x[:, i], y[:, i]
        states = [tf.where(starts_epoch[i], tf.zeros_like(s), s) for s in states]
        global_chars = tf.cast(tf.size(y) * strategy.num_replicas_in_sync, tf.float32)
        with tf.GradientTape() as tape:
            losses, states = losses_of(net, x, y, states)
            loss = tf.reduce_sum(losses) / global_chars
        grads = tape.gradient(loss, net.trainable_variables)
        # Clip by the norm of the summed gradient, as one device would. Keras' optimizer sums the
        # replicas' gradients itself and has no way to take sums made here, so with several
        # replicas the sum is made twice (on one device both are no-ops). When clipping, an
        # infinite norm makes every gradient NaN, so the loss check stops the run.
        total = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
        grad_norm = tf.linalg.global_norm(total)
        if grad_clip > 0:  # 0: no clipping (a clip norm of infinity would make inf / inf = NaN)
            grads, _ = tf.clip_by_global_norm(grads, grad_clip, use_norm=grad_norm)
        optimizer.apply_gradients(zip(grads, net.trainable_variables))
        return loss, grad_norm, states

    @tf.function(reduce_retracing=True)
    def train_steps(x, y, states, starts_epoch):
        steps = tf.shape(starts_epoch)[0]
        # The loop carries states in the form strategy.run returns them: with one local replica,
        # plain tensors rather than the per-replica values the caller passes.
        states = strategy.run(lambda states: [tf.identity(s) for s in states], args=(states,))
        losses = tf.TensorArray(tf.float32, size=steps)
        grad_norms = tf.TensorArray(tf.float32, size=steps)
        for i in tf.range(steps):
            loss, grad_norm, states = strategy.run(replica_step, args=(x, y, states, starts_epoch, i))
            losses = losses.write(i, strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None))
            grad_norms = grad_norms.write(i, strategy.reduce(tf.distribute.ReduceOp.MEAN, grad_norm, axis=None))
        return losses.stack(), grad_norms.stack(), states

    return train_steps




def keras_losses(net, ids, targets, states):
    """(per-position losses, new states) of the Keras model in training mode."""
    logits, *states = net([ids, *states], training=True)
    return cpu_training.cross_entropy(logits, targets), states


def window_dataset(reader, calls):
    """tf.data pipeline of the windows of each training call (read_utils.StreamReader.windows),
    prefetched; calls is an int array [number of calls, 2] of (first step, number of steps)."""
    shape = [reader.batch_size, None, reader.seq_length]

    def windows(call):
        x, y, starts_epoch = tf.numpy_function(
            reader.windows, [call[0], call[1]], [tf.int32, tf.int32, tf.bool], stateful=False
        )
        return tf.ensure_shape(x, shape), tf.ensure_shape(y, shape), tf.ensure_shape(starts_epoch, [None])

    ds = tf.data.Dataset.from_tensor_slices(calls).map(windows).prefetch(2)
    options = tf.data.Options()
    # Autotuning stalls the iterator's teardown for seconds on TF 2.21 (docs/DESIGN.md); prefetch(2) is enough.
    options.autotune.enabled = False
    return ds.with_options(options)
