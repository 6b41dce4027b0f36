"""Trains a character-level LSTM on a UTF-8 text file.

    python train.py                          # the original project's poetry corpus, default recipe
    python train.py --input tang --name tang # the Complete Tang Poems, with titles: whole poems
    python train.py --input my.txt --name my # any UTF-8 text
    tensorboard --logdir checkpoints         # watch it learn

Running it again with the same --name resumes from the latest checkpoint. The flags and the inputs
are checked before TensorFlow starts; trainer.py holds the training itself.
"""

import os
import time
import typing

STARTED = time.perf_counter()  # --time_budget counts from here: start-up is part of the budget

from absl import app, flags, logging

import cli
import corpora
import read_utils
import recipes
import run_dir
import tuning

# Flags first, as in every absl app. Defaults are the recipe in docs/PERFORMANCE.md; the model's
# come from run_dir.ModelConfig, so the two cannot disagree.
default = run_dir.model_default
flags.DEFINE_string("input", None, "UTF-8 text file to learn from, or a built-in corpus downloaded on first use: "
                    "poetry (the default: the original project's couplets) or tang (the Complete Tang Poems, with "
                    "titles); the recipe chosen for the corpus (recipes.py) sets the flags not given")
flags.DEFINE_string("name", "default", "run name: checkpoints go to checkpoints/<name>")
flags.DEFINE_string("checkpoint_dir", None, "checkpoint directory (default: checkpoints/<name>)")
flags.DEFINE_string("logdir", None, "TensorBoard log directory (default: <checkpoint_dir>/logs)")
flags.DEFINE_integer("max_steps", None, "total training steps (one window of every stream each); given, it wins "
                     "over --time_budget", lower_bound=1)
flags.DEFINE_string("time_budget", "10m", "train for this much wall-clock time, start-up and validation included "
                    "(e.g. 90s, 10m, 1h30m): after the warmup the step rate fixes --max_steps so that the "
                    "learning-rate decay ends with the budget")
flags.DEFINE_float("max_epochs", 0, "under --time_budget, end the schedule after this many passes over the training "
                   "text if the budget allows more (0: no limit); small corpora are memorised past a few dozen",
                   lower_bound=0)
flags.DEFINE_integer("batch_size", 32, "parallel streams per batch", lower_bound=1)
flags.DEFINE_integer("seq_length", 26, "characters per window (truncated backprop length)", lower_bound=1)
flags.DEFINE_integer("lstm_size", default("lstm_size"), "units in each LSTM layer", lower_bound=1)
flags.DEFINE_integer("num_layers", default("num_layers"), "stacked LSTM layers", lower_bound=1)
flags.DEFINE_integer("embedding_size", default("embedding_size"), "character embedding width", lower_bound=1)
flags.DEFINE_boolean("use_embedding", default("use_embedding"),
                     "learn an embedding; false feeds one-hot vectors (small alphabets)")
flags.DEFINE_boolean("poem_position", default("poem_position"),
                     "also feed the model, beside each character, its slot in the poem and the poem's rhyme group so "
                     "far (poem_position.py); for a corpus of titled poems separated by empty lines, such as tang")
flags.DEFINE_float("dropout", default("dropout"), "dropout after each LSTM layer, in [0, 1)")
flags.DEFINE_float("learning_rate", 0.008, "peak Adam learning rate", lower_bound=0)
flags.DEFINE_integer("warmup_steps", 100, "steps of linear learning-rate warmup", lower_bound=0)
flags.DEFINE_float("min_lr_fraction", 0.05, "cosine decay ends at this fraction of the peak rate", lower_bound=0, upper_bound=1)
flags.DEFINE_float("grad_clip", 5.0, "clip gradients to this global norm (0: no clipping)", lower_bound=0)
flags.DEFINE_integer("max_vocab", 0, "keep only the most frequent characters (0: keep all)", lower_bound=0)
flags.DEFINE_integer("min_count", 2, "characters seen fewer times in the training text are trained as the unknown "
                     "character, so the model keeps honest probability for characters it never saw", lower_bound=1)
flags.DEFINE_float("val_fraction", 0.05, "fraction of lines held out for validation, in [0, 0.5]; whole records "
                   "instead in a text of records separated by empty lines, such as tang's poems (read_utils.split_kind)",
                   lower_bound=0, upper_bound=0.5)
flags.DEFINE_integer("eval_every", 1300, "validate every this many steps (and at the end)", lower_bound=1)
flags.DEFINE_integer("patience", 0, "stop when this many validations in a row find no better loss than the best "
                     "so far (0: train to the end); either way the run ends with the weights that validated best",
                     lower_bound=0)
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
flags.DEFINE_integer("steps_per_execution", tuning.STEPS_PER_CALL, "training steps per compiled call, as in Keras' compile(); "
                     "a call ends early at a step that logs, validates or saves, and Ctrl-C waits for it", lower_bound=1)
# Scaling out (docs/distributed.md).
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker", "tpu"], "tf.distribute strategy: one "
                  "device, all local GPUs, workers from TF_CONFIG, or a TPU; --batch_size is the global batch, split over the replicas")
flags.DEFINE_string("tpu", "", "with --strategy tpu: the TPU's name or grpc:// address (empty: a local TPU)")
flags.DEFINE_integer("cpu_devices", 1, "split the CPU into this many devices, to try --strategy mirrored without GPUs", lower_bound=1)
# The original project's flag names, so its README commands run unchanged.
flags.DEFINE_alias("input_file", "input")
flags.DEFINE_alias("num_seqs", "batch_size")
flags.DEFINE_alias("num_steps", "seq_length")
flags.DEFINE_float("train_keep_prob", None, "original name: keep probability, i.e. 1 - --dropout")
flags.register_validator("dropout", lambda v: 0 <= v < 1, "--dropout must be in [0, 1)")
flags.register_validator("time_budget", lambda v: cli.duration_seconds(v) is not None,
                         "--time_budget must be a duration such as 90s, 10m or 1h30m")
flags.register_validator("train_keep_prob", lambda v: v is None or 0 < v <= 1, "--train_keep_prob must be in (0, 1]")
FLAGS = flags.FLAGS



def main(argv):
    del argv
    try:
        inputs = check_inputs()
        cli.import_tensorflow()
        import trainer  # TensorFlow's side, once the inputs are known to be good

        trainer.train(inputs)
    except read_utils.InputError as e:
        cli.fail(e)


def check_inputs():
    """What training starts from (trainer.Inputs), checked before TensorFlow starts.

    The flags a user did not give take a resumed run's values; a damaged run or a corpus that is
    not text is refused here, before anything is written.
    """
    if FLAGS.train_keep_prob is not None:
        FLAGS.dropout = 1.0 - FLAGS.train_keep_prob
    checkpoint_dir = run_dir.path_of(FLAGS.name, FLAGS.checkpoint_dir)
    logdir = FLAGS.logdir or os.path.join(checkpoint_dir, "logs")
    if os.path.realpath(logdir) == os.path.realpath(checkpoint_dir):
        # Both would keep a "checkpoint" file there: the run's and the projector's embedding's.
        raise read_utils.InputError(f"--logdir {logdir} is the checkpoint directory; leave it out to log to {checkpoint_dir}/logs")
    saved = saved_run(checkpoint_dir)
    saved_corpus = saved.record.get("corpus", {}) if saved else {}
    input_name = FLAGS.input or saved_corpus.get("name") or corpora.DEFAULT  # a resumed run keeps its built-in corpus
    corpus = corpora.resolve(input_name, FLAGS.cache_dir)
    read_utils.check_text_file(corpus)  # before hashing it, for a clear error
    name = input_name if input_name in corpora.NAMES else None
    if saved:
        adopt_saved_settings(saved.record)
        recipe = saved_corpus.get("recipe", {})
    else:
        recipe = apply_recipe(*recipes.choose(name, corpus))
    # A run of --max_steps (given, or saved by the run resumed) has no budget; without, the steps
    # are decided after the warmup (trainer.decide_steps) to fill the budget.
    budget = None if FLAGS.max_steps else cli.duration_seconds(FLAGS.time_budget)
    return Inputs(checkpoint_dir, logdir, saved, corpus, read_utils.sha256_of(corpus), name, recipe, STARTED, budget)


class Inputs(typing.NamedTuple):
    checkpoint_dir: str
    logdir: str
    saved: run_dir.Run | None  # the run being resumed, or None for a new one
    corpus: str  # the text file's path
    corpus_sha256: str
    corpus_name: str | None  # the built-in corpus' name (corpora.NAMES), None for a path
    recipe: dict  # the recipe chosen (recipes.choose), as config.json records it
    started: float  # time.perf_counter() when train.py started
    budget_seconds: float | None  # --time_budget in seconds


def saved_run(checkpoint_dir):
    """The run_dir.Run being resumed, or None for a new run.

    A damaged config.json or vocab.json is an error rather than a reason to start over and
    overwrite the run.
    """
    if not os.path.exists(os.path.join(checkpoint_dir, "config.json")):
        return None
    try:
        saved = run_dir.read_run(checkpoint_dir, need_checkpoint=False)
        saved.record["training"]  # the resumed flags must be there
        return saved
    except (run_dir.RunError, KeyError, TypeError) as e:
        raise read_utils.InputError(f"cannot resume from {checkpoint_dir}: {e}") from None


def adopt_saved_settings(saved):
    """Makes the flags a user did not give take the resumed run's values (saved: its config.json).

    A model or reader flag given explicitly that contradicts the run is an error: it would
    silently change what the checkpoint means. Recipe flags (steps, learning rate, ...) may change,
    and the rest of the recipe is kept.
    """
    previous = run_dir.ModelConfig.from_json(saved["model"]).to_json() | saved["training"]  # a later field at its default
    for key in run_dir.MODEL_FLAGS + run_dir.READER_FLAGS + run_dir.RECIPE_FLAGS:
        if key not in previous:
            continue
        explicit = given(key)
        if not explicit:
            FLAGS[key].value = previous[key]
        elif key not in run_dir.RECIPE_FLAGS and FLAGS[key].value != previous[key]:
            raise read_utils.InputError(
                f"--{key}={FLAGS[key].value} differs from the saved run's {previous[key]}; "
                "drop the flag to resume, or start a new run with another --name"
            )


def apply_recipe(recipe, why):
    """Gives the flags that the command line leaves out the values of the corpus' recipe
    (recipes.Recipe, chosen because of why); returns what config.json records of it: its name,
    why it was chosen, and the values it set."""
    applied = {key: value for key, value in recipe.flags.items() if not given(key)}
    for key, value in applied.items():
        FLAGS[key].value = value
    logging.info("recipe %s, for %s (%s): %s", recipe.name, recipe.when, why,
                 ", ".join(f"--{key}={value}" for key, value in applied.items()) or "train.py's defaults")
    return {"name": recipe.name, "why": why, "flags": applied}


def given(key):
    """True when the command line sets flag key (dropout also through --train_keep_prob)."""
    return FLAGS[key].present or (key == "dropout" and FLAGS["train_keep_prob"].present)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
