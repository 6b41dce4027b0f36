"""Training, once train.py has checked its flags and inputs: the model, the optimizer, the compiled
training steps, validation, checkpoints and TensorBoard.

Each training call runs several steps (--steps_per_execution) in one compiled tf.function; calls end
at every step that logs, validates or saves (read_utils.call_plan). On a CPU the steps compute the
model's loss by hand (cpu_training.py); on a GPU through the Keras layers, which take cuDNN.
"""

import contextlib
import functools
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
from absl import flags, logging

import cli
import cpu_training
import distribute
import model as model_lib
import monitor
import poem_metrics
import poem_position
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
    checkpoint_dir, logdir, saved, corpus, corpus_sha256, corpus_name, recipe, started, budget_seconds = inputs
    saved_vocab = saved.vocab if saved else None
    cache_dir = os.path.join(scratch, "corpus") if scratch else os.path.join(FLAGS.cache_dir, corpus_sha256[:16])
    data = load_corpus(corpus, saved_vocab, corpus_sha256, cache_dir)
    vocab = data.vocab
    if FLAGS.poem_position and data.split != read_utils.RECORDS:
        raise read_utils.InputError(
            f"--poem_position needs poems separated by empty lines, each a title line and its body (such as "
            f"--input tang); {corpus} has no such records: leave out --poem_position"
        )
    train_ids, val_ids = (poem_position.model_ids(ids, vocab, FLAGS.poem_position, cache_dir)
                          for ids in (data.train_ids, data.val_ids))
    reader = read_utils.StreamReader(train_ids, FLAGS.batch_size, FLAGS.seq_length)
    config = run_dir.ModelConfig(vocab_size=len(vocab), **{k: FLAGS[k].value for k in run_dir.MODEL_FLAGS})
    logging.info(
        "corpus %s: %s training and %s validation characters (whole %s held out), vocabulary %d (%.2f%% of the "
        "training text is characters seen fewer than --min_count %d times, trained as unknown), %d windows per epoch, "
        "%d replica(s), %s",
        corpus, f"{len(data.train_ids):,}", f"{len(data.val_ids):,}", data.split, len(vocab),
        100 * data.counts[0] / max(1, len(data.train_ids)), FLAGS.min_count, reader.windows_per_epoch,
        strategy.num_replicas_in_sync, FLAGS.precision,
    )

    keras.utils.set_random_seed(FLAGS.seed)
    with strategy.scope():
        net = model_lib.build_model(config, FLAGS.precision)
        decay_steps = tf.Variable(decay_steps_of(FLAGS.max_steps), trainable=False, dtype=tf.int64)
        optimizer = make_optimizer(decay_steps)
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
    projector = evaluator = sampler = record_steps = None
    if chief:
        # Whether the corpus is poetry, and in which form, goes to config.json (sample.py's line limit).
        scorer = poem_metrics.PoemScorer.from_training_text(vocab.decode(data.train_ids[:SCORER_CHARS]))
        corpus_record = {"path": os.path.abspath(corpus), "sha256": corpus_sha256, "name": corpus_name,
                         "split": data.split, "recipe": recipe, "clause_length": scorer.clause_length}
        record = run_config(config, corpus_record)
        with writing(checkpoint_dir):
            vocab.save(os.path.join(checkpoint_dir, "vocab.json"))
            read_utils.write_json_atomic(os.path.join(checkpoint_dir, "config.json"), record)
        with writing(logdir):
            monitor.log_run_config(logdir, record)
            projector = monitor.EmbeddingProjector(logdir, net, vocab) if config.use_embedding else None
        if len(data.val_ids) > 1:
            windows = read_utils.EvalWindows(val_ids, 16, tuning.VALIDATION_WINDOW, max_chars=FLAGS.eval_chars)
            evaluator = monitor.Evaluator(config, windows)
        if FLAGS.eval_poems:
            sampler = monitor.PoemSampler(config, vocab, FLAGS.eval_poems, FLAGS.eval_temperature, FLAGS.seed, scorer,
                                          records=data.split == read_utils.RECORDS)
        record_steps = functools.partial(record_max_steps, checkpoint_dir, record)
    best = BestWeights(net, os.path.join(save_dir, BEST_DIR)) if evaluator else None
    run = Run(strategy, net, optimizer, states, manager, projector, decay_steps, started, budget_seconds, record_steps,
              best, functools.partial(record_kept, checkpoint_dir, record) if chief else None)
    run_training(run, reader, evaluator, logdir if chief else None, sampler)


BEST_DIR = "best"  # the run directory's folder of the best-validating weights (BestWeights)


def record_max_steps(checkpoint_dir, record, max_steps):
    """Writes config.json (record) again with the steps a --time_budget run decided on."""
    record["training"]["max_steps"] = max_steps
    write_record(checkpoint_dir, record)


def record_kept(checkpoint_dir, record, step, best):
    """Notes in config.json (record) that the checkpoint of step holds the weights of an earlier
    step, which validated best (best: BestWeights)."""
    record["kept"] = {"step": step, "weights_of_step": best.step, "val_loss": best.loss}
    write_record(checkpoint_dir, record)


def write_record(checkpoint_dir, record):
    with writing(checkpoint_dir):
        read_utils.write_json_atomic(os.path.join(checkpoint_dir, "config.json"), record)


def load_corpus(corpus, saved_vocab, sha256, cache_dir):
    """The encoded corpus (read_utils.Corpus); a resumed run keeps its saved vocabulary."""
    data = read_utils.encode_corpus(corpus, cache_dir, FLAGS.val_fraction, saved_vocab, FLAGS.max_vocab, sha256,
                                    FLAGS.min_count)
    if data.unseen and not FLAGS.max_vocab:
        raise read_utils.InputError(
            f"{corpus} has {len(data.unseen)} characters that the run's saved vocabulary lacks "
            f"(e.g. {''.join(data.unseen[:10])!r}); train on it under a new --name"
        )
    return data


def make_optimizer(decay_steps):
    """Adam with a short linear warmup, then cosine decay to min_lr_fraction at max_steps.

    decay_steps is a variable (max_steps minus the warmup), so that a run under --time_budget can
    fix it after the warmup; until then it holds a placeholder the warmup never reaches.
    """
    warmup = warmup_steps(FLAGS.max_steps)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=FLAGS.learning_rate * (0.1 if warmup else 1.0),
        decay_steps=decay_steps,
        alpha=FLAGS.min_lr_fraction,
        warmup_target=FLAGS.learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    return cpu_training.Adam(learning_rate=schedule)


def warmup_steps(max_steps):
    """--warmup_steps, leaving at least one step of decay (max_steps None: not decided yet)."""
    return FLAGS.warmup_steps if max_steps is None else min(FLAGS.warmup_steps, max_steps - 1)


def decay_steps_of(max_steps):
    return (max_steps if max_steps is not None else 10**9) - warmup_steps(max_steps)


def run_config(config, corpus_record):
    """config.json: what sample.py and evaluate.py need, and what a resumed run keeps.

    corpus_record: the corpus' path and sha256, its built-in name (None for a path), how validation
    split it (read_utils.LINES or RECORDS), the flags its recipe set, and its clause_length (5 or 7
    for poetry in couplets, None for other text).
    """
    training = {k: FLAGS[k].value for k in run_dir.READER_FLAGS + run_dir.RECIPE_FLAGS}
    return {"format": run_dir.CONFIG_FORMAT, "model": config.to_json(), "training": training, "corpus": corpus_record}


class BestWeights:
    """The weights that validated best so far, kept in their own directory (<run>/best/) with
    best.json (their step and validation loss), so that they outlive --max_to_keep and a resume.

    At the end of training the run's last checkpoint takes them if they validated better than the
    last weights (TrainingLoop.keep_best): on a small corpus the last weights have often memorised it.
    """

    def __init__(self, net, directory):
        self.checkpoint = model_lib.weights_checkpoint(net)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=1)
        self.record_path = os.path.join(directory, "best.json")
        self.step, self.loss = None, math.inf
        if self.manager.latest_checkpoint and os.path.exists(self.record_path):
            with open(self.record_path, encoding="utf-8") as f:
                record = json.load(f)
            self.step, self.loss = record["step"], record["val_loss"]
        self.validations_since = 0  # validations since the best one, in this process

    def offer(self, step, loss):
        """Keeps the weights of step if their validation loss is the best so far."""
        if loss < self.loss:
            self.step, self.loss, self.validations_since = step, loss, 0
            with writing(self.manager.directory):
                self.manager.save(checkpoint_number=step)
                read_utils.write_json_atomic(self.record_path, {"step": step, "val_loss": loss})
        else:
            self.validations_since += 1

    def restore(self):
        self.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()


class Run(typing.NamedTuple):
    """What the training loop works on and saves."""

    strategy: tf.distribute.Strategy
    net: keras.Model
    optimizer: keras.optimizers.Optimizer
    states: list  # variables holding the streams' LSTM states at the last save
    manager: tf.train.CheckpointManager
    projector: monitor.EmbeddingProjector | None
    decay_steps: tf.Variable  # the learning-rate schedule's, fixed after the warmup under --time_budget
    started: float  # time.perf_counter() when train.py started: --time_budget counts from there
    budget_seconds: float | None  # --time_budget
    record_steps: typing.Callable | None  # writes a decided max_steps into config.json (the chief only)
    best: BestWeights | None  # None without validation
    record_kept: typing.Callable | None  # notes in config.json that the last checkpoint holds the best weights


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
    """Trains to --max_steps, or, under --time_budget with no step count decided yet, through the
    warmup, then decides the step count (decide_steps), and again after each third of the steps
    left, and trains to it. logdir None writes no logs (a non-chief worker)."""
    loop = TrainingLoop(run, reader, evaluator, logdir, sampler)
    try:
        if FLAGS.max_steps is None:
            measured_from = loop.step + 2 * FLAGS.steps_per_execution  # after the calls that trace and compile
            decision = max(FLAGS.warmup_steps, measured_from + BUDGET_RATE_STEPS)
            if loop.train_to(measured_from) and loop.train_to(decision):
                event_seconds = decide_steps(loop, measured_from)
                # The step rate drifts (other work on the machine, the machine's own speed, caches
                # still cold at first): the end is fixed again after each third of the steps left.
                while FLAGS.max_steps - loop.step >= REPLAN_MIN_STEPS:
                    measured_from = loop.step
                    if not loop.train_to(loop.step + (FLAGS.max_steps - loop.step) // 3):
                        break
                    decide_steps(loop, measured_from, event_seconds)
        if FLAGS.max_steps is not None:  # None: stopped before the budget decided it
            loop.train_to(FLAGS.max_steps)
    finally:
        loop.flush()
    loop.save_last()  # not after an error: the last good checkpoint stays the latest


BUDGET_RATE_STEPS = 48  # steps timed, after the warmup's compilation, to measure a budgeted run's step rate
REPLAN_MIN_STEPS = 3 * BUDGET_RATE_STEPS  # a budgeted run stops fixing its end again when fewer steps are left


def decide_steps(loop, measured_from, event_seconds=None):
    """Fixes --max_steps so that the learning-rate decay ends when --time_budget does, or after
    --max_epochs passes over the training text if that comes first; returns the time one
    validation, checkpoint and poem sample takes.

    The step rate is measured over the steps since measured_from, the events' time left out. Without
    event_seconds, one validation, checkpoint and poem sample, made here, measure it. config.json
    then records the steps, so a resumed run finishes the same schedule.
    """
    step = loop.step
    steps_per_second = (step - measured_from) / loop.training_seconds_since(measured_from)
    if event_seconds is None:
        event_start = time.perf_counter()
        loop.validate(step)
        loop.save(step)
        event_seconds = time.perf_counter() - event_start
    seconds_left = loop.run.budget_seconds - (time.perf_counter() - loop.run.started)
    total = steps_within(seconds_left, step, steps_per_second, event_seconds, (FLAGS.eval_every, FLAGS.save_every_n))
    capped = ""
    epoch_steps = max(step + 1, round(FLAGS.max_epochs * loop.reader.windows_per_epoch))
    if FLAGS.max_epochs and total > epoch_steps:
        total, capped = epoch_steps, f"; --max_epochs {FLAGS.max_epochs:g} ends it before the budget"
    if total != FLAGS.max_steps:
        logging.info("--time_budget %s: training for %d steps (%.1f steps/s; %.1f s a validation and checkpoint%s)",
                     FLAGS.time_budget, total, steps_per_second, event_seconds, capped)
        FLAGS.max_steps = total
        loop.set_total_steps(total)
        if loop.run.record_steps:
            loop.run.record_steps(total)
    return event_seconds


def steps_within(seconds_left, step, steps_per_second, event_seconds, event_intervals):
    """The last step at which training from step, at steps_per_second, with the events on the way
    (each interval's multiples, and the end, event_seconds each) still fits in seconds_left; at
    least step + 1."""

    def seconds_to(end):
        events = 1 + len({n for interval in event_intervals for n in range(step + 1, end) if n % interval == 0})
        return (end - step) / steps_per_second + events * event_seconds

    low, high = step + 1, step + 1 + max(0, int(steps_per_second * seconds_left))  # seconds_to(high) > seconds_left
    while high - low > 1:  # seconds_to grows with the end: bisect for the last end that fits
        middle = (low + high) // 2
        low, high = (middle, high) if seconds_to(middle) <= seconds_left else (low, middle)
    return low


class TrainingLoop:
    """The training calls with what happens between them: log, validate, checkpoint, progress."""

    def __init__(self, run, reader, evaluator, logdir, sampler):
        self.run, self.reader, self.evaluator, self.sampler = run, reader, evaluator, sampler
        self.train_steps = make_train_steps(run.net, run.optimizer, FLAGS.grad_clip, run.strategy)
        self.writers = {
            name: tf.summary.create_file_writer(os.path.join(logdir, name)) if logdir else tf.summary.create_noop_writer()
            for name in ("train", "validation")
        }
        self.step = int(run.optimizer.iterations.numpy())
        if FLAGS.max_steps is not None and self.step >= FLAGS.max_steps:
            logging.info("already at step %d of --max_steps %d; raise --max_steps to train more", self.step, FLAGS.max_steps)
        self.progress = Progress(self.step, FLAGS.max_steps, run.started, run.budget_seconds)
        self.chars_per_step = reader.batch_size * reader.seq_length
        self.tick, self.tick_step = time.perf_counter(), self.step
        self.paused_seconds = 0.0  # spent in validation, checkpoints and poem samples
        self.times = {self.step: (self.tick, 0.0)}  # (when each call ended, paused_seconds by then), by its last step
        self.states = distribute.split_batch(run.strategy, [tf.convert_to_tensor(state) for state in run.states])
        self.stop = StopRequest()
        self.stopped_early = False  # by --patience
        self.last_val_loss = math.inf

    def set_total_steps(self, total):
        self.run.decay_steps.assign(decay_steps_of(total))
        self.progress.set_total(total)

    def train_to(self, end):
        """Trains up to step end; False when Ctrl-C stopped it first (now or before)."""
        if self.stop.requested or self.stopped_early:
            return False
        event_intervals = (FLAGS.log_every_n, FLAGS.eval_every, FLAGS.save_every_n)  # calls end where these act
        calls = read_utils.call_plan(self.step, end, FLAGS.steps_per_execution, event_intervals)
        for x, y, starts_epoch in window_dataset(self.reader, calls):
            self.train_call(x, y, starts_epoch)
            if self.stopped_early:
                return False
            if self.stop.requested:
                print(file=sys.stderr)
                logging.info("interrupted at step %d: saving a checkpoint", self.step)
                return False
        return True

    def train_call(self, x, y, starts_epoch):
        run = self.run
        losses, grad_norms, self.states = self.train_steps(*distribute.split_batch(run.strategy, [x, y]), self.states,
                                                           starts_epoch)
        step, losses = int(run.optimizer.iterations.numpy()), losses.numpy()
        self.step = step
        self.times[step] = (time.perf_counter(), self.paused_seconds)
        if not np.isfinite(losses).all():
            bad = int(np.argmin(np.isfinite(losses)))  # the call's first step with a non-finite loss
            cli.fail(
                f"the training loss became {losses[bad]} at step {step - len(losses) + 1 + bad}; stopped without "
                f"saving, so the last good checkpoint is kept; resume with a lower --learning_rate (now {FLAGS.learning_rate})"
            )
        values = [("loss", float(losses[-1]))]
        last = step == FLAGS.max_steps
        logs = step % FLAGS.log_every_n == 0 or last
        if logs:
            values.append(("chars/s", self.log_training(step, float(losses[-1]), float(grad_norms[-1]))))
        if step % FLAGS.eval_every == 0 or last:
            values += self.paused(self.validate, step)
            if FLAGS.patience and run.best and run.best.validations_since >= FLAGS.patience:
                logging.info("stopping early: no better validation loss in the last %d validations (--patience)",
                             FLAGS.patience)
                last = self.stopped_early = True
                if run.record_steps:
                    run.record_steps(step)  # the run is finished: resuming it does not train on
        if last:
            self.keep_best(step)
        if step % FLAGS.save_every_n == 0 or last:
            self.paused(self.save, step)
        self.progress.update(step, values, logs)

    def log_training(self, step, loss, grad_norm):
        """Writes the training scalars; returns the speed since the last log, in characters per second."""
        now = time.perf_counter()
        speed = (step - self.tick_step) * self.chars_per_step / (now - self.tick)
        self.tick, self.tick_step = now, step
        with self.writers["train"].as_default(step=step):
            tf.summary.scalar("loss", loss)
            tf.summary.scalar("learning_rate", float(self.run.optimizer.learning_rate.numpy()))
            tf.summary.scalar("grad_norm", grad_norm)
            tf.summary.scalar("chars_per_second", speed)
        return speed

    def paused(self, event, step):
        """event(step), its time kept out of the training speed."""
        started = time.perf_counter()
        result = event(step)
        self.tick += time.perf_counter() - started
        self.paused_seconds += time.perf_counter() - started
        return result

    def training_seconds_since(self, step):
        """Seconds spent training since the call that ended at step, the events' time left out."""
        then, paused_then = self.times[step]
        return time.perf_counter() - then - (self.paused_seconds - paused_then)

    def validate(self, step):
        """The validation loss, logged; [("val_loss", loss)], or [] without held-out text."""
        if not self.evaluator:
            return []
        val_loss = self.evaluator.loss(self.run.net)
        self.last_val_loss = val_loss
        if self.run.best:
            self.run.best.offer(step, val_loss)
        with self.writers["validation"].as_default(step=step):
            tf.summary.scalar("loss", val_loss)
            tf.summary.scalar("bits_per_char", val_loss / math.log(2))
            tf.summary.scalar("perplexity", math.exp(val_loss) if val_loss < 88 else math.inf)  # float32 range
        logging.info("step %d: validation loss %.4f nats/char, %.4f bits/char", step, val_loss, val_loss / math.log(2))
        return [("val_loss", val_loss)]

    def keep_best(self, step):
        """At the end of training, puts back the weights that validated best if the last ones
        (validated at step) did worse: the run's last checkpoint then holds them."""
        best = self.run.best
        if best is None or best.step in (None, step) or not best.loss < self.last_val_loss:
            return
        best.restore()
        logging.info("keeping the weights of step %d, which validated best (%.4f nats/char; step %d: %.4f)",
                     best.step, best.loss, step, self.last_val_loss)
        if self.run.record_kept:
            self.run.record_kept(step, best)

    def save(self, step):
        """A checkpoint, and poems sampled from it for TensorBoard."""
        save_checkpoint(self.run, self.states, step)
        if self.sampler:
            with self.writers["validation"].as_default():
                self.sampler.log(self.run.manager.latest_checkpoint, step)

    def flush(self):
        for writer in self.writers.values():
            writer.flush()

    def save_last(self):
        """Saves the last step, unless it is saved already."""
        latest = self.run.manager.latest_checkpoint
        if latest is None or not latest.endswith(f"-{self.step}"):
            save_checkpoint(self.run, self.states, self.step)
        logging.info("checkpoint %s", self.run.manager.latest_checkpoint)


class Progress:
    """Training progress: Keras' progress bar on a terminal; where the output goes to a file (nohup,
    CI, > train.log), one plain line at each --log_every_n step instead of the bar's redraws."""

    def __init__(self, start, total, started, budget_seconds):
        self.total = total  # None until a --time_budget run decides it
        self.started, self.budget_seconds = started, budget_seconds
        self.bar = None
        if sys.stdout.isatty():
            self.bar = keras.utils.Progbar(total, stateful_metrics=["loss", "chars/s", "val_loss", "min_left"])
            self.bar.update(start)

    def set_total(self, total):
        self.total = total
        if self.bar:
            self.bar.target = total

    def update(self, step, values, logs):
        if self.budget_seconds:
            values = values + [("min_left", (self.budget_seconds - (time.perf_counter() - self.started)) / 60)]
        if self.bar:
            self.bar.update(step, values)
        elif logs:
            figures = ", ".join(f"{name} {value:,.0f}" if name == "chars/s" else f"{name} {value:.4f}" for name, value in values)
            logging.info("step %d/%s: %s", step, self.total or "?", figures)


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
