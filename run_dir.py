"""The run directory that train.py writes and sample.py, evaluate.py and the rest read.

    checkpoints/<name>/config.json   format version, model (ModelConfig), training flags, corpus
    checkpoints/<name>/vocab.json    the vocabulary in id order, id 0 the unknown character
    checkpoints/<name>/ckpt-*        TensorFlow checkpoints (tf.train.CheckpointManager)
    checkpoints/<name>/logs/         TensorBoard event files

Reading a run needs no TensorFlow until its checkpoint is opened, so the entry points refuse a
missing or damaged run before TensorFlow starts.
"""

import dataclasses
import json
import os
import typing

import read_utils

CONFIG_FORMAT = 1  # config.json's layout; a run of a newer format is refused by name


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model's shape: config.json's "model" section. The defaults are train.py's flags'."""

    vocab_size: int
    embedding_size: int = 128  # width of the character embedding (unused when one-hot)
    lstm_size: int = 192  # units in each LSTM layer
    num_layers: int = 1  # stacked LSTM layers
    dropout: float = 0.1  # dropout after each LSTM layer, training only
    use_embedding: bool = True  # False feeds one-hot vectors, as the original offered
    poem_position: bool = False  # also feed each character's slot in its poem and the rhyme so far (poem_position.py)

    def to_json(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj):
        """The config of config.json's "model" section; a run made before a field in LATER_FIELDS
        existed has its default."""
        return cls(**{f.name: obj[f.name] if f.name in obj or f.name not in LATER_FIELDS else f.default
                      for f in dataclasses.fields(cls)})


LATER_FIELDS = ("poem_position",)  # ModelConfig fields that runs made before them lack


# config.json's "model" section is ModelConfig; its "training" section holds these train.py flags.
MODEL_FLAGS = tuple(field.name for field in dataclasses.fields(ModelConfig) if field.name != "vocab_size")
READER_FLAGS = ("batch_size", "seq_length", "max_vocab", "min_count", "val_fraction")  # fix the reader's layout, as MODEL_FLAGS the model's
RECIPE_FLAGS = ("max_steps", "time_budget", "max_epochs", "patience", "learning_rate", "warmup_steps", "min_lr_fraction", "grad_clip", "seed", "precision")


def model_default(name):
    """ModelConfig's default for a field: train.py's flag default of the same name."""
    return next(f.default for f in dataclasses.fields(ModelConfig) if f.name == name)


class RunError(read_utils.InputError):
    """A run directory that cannot be used; the message says why and what to do."""


class Run(typing.NamedTuple):
    config: ModelConfig
    vocab: read_utils.Vocab
    record: dict  # the whole of config.json


def path_of(name, checkpoint_dir=None):
    """The run directory the flags name: --checkpoint_dir, else checkpoints/<--name>."""
    return checkpoint_dir or os.path.join("checkpoints", name)


def read_record(checkpoint_dir):
    """config.json of a run, its format checked; FileNotFoundError when there is none."""
    with open(os.path.join(checkpoint_dir, "config.json"), encoding="utf-8") as f:
        record = json.load(f)
    if not isinstance(record, dict) or not isinstance(record.get("format"), int):
        raise ValueError("it has no format version")
    if record["format"] > CONFIG_FORMAT:
        raise RunError(
            f"config.json in {checkpoint_dir} has format {record['format']}, newer than this code's "
            f"{CONFIG_FORMAT}; update CharRNN (git pull) to use this run"
        )
    return record


def read_run(checkpoint_dir, need_checkpoint=True):
    """The Run in a directory; a RunError when it is missing, damaged or (need_checkpoint) not yet saved."""
    if not os.path.isdir(checkpoint_dir):
        raise RunError(
            f"checkpoint directory {checkpoint_dir} does not exist; train first "
            f"(python train.py --name NAME) or pass --checkpoint_dir of a trained run"
        )
    try:
        record = read_record(checkpoint_dir)
        config = ModelConfig.from_json(record["model"])
        vocab = read_utils.Vocab.load(os.path.join(checkpoint_dir, "vocab.json"))
    except FileNotFoundError as e:
        raise RunError(
            f"{checkpoint_dir} has no {os.path.basename(e.filename)}; it is not a finished CharRNN "
            "run: train into it with train.py, or pass another --checkpoint_dir"
        ) from None
    except (ValueError, KeyError, TypeError) as e:
        if isinstance(e, RunError):
            raise
        raise RunError(
            f"config.json or vocab.json in {checkpoint_dir} is corrupt ({type(e).__name__}: {e}); "
            "restore them from the run, or retrain under a new --name"
        ) from None
    if config.vocab_size != len(vocab):
        raise RunError(
            f"config.json in {checkpoint_dir} says {config.vocab_size} characters but vocab.json has "
            f"{len(vocab)}; the two files come from different runs"
        )
    if need_checkpoint and not os.path.exists(os.path.join(checkpoint_dir, "checkpoint")):
        raise no_checkpoint_error(checkpoint_dir)
    return Run(config, vocab, record)


def is_poem_corpus(record):
    """True when the run's corpus is poetry in couplets: config.json's corpus "clause_length" (5 or
    7, None for other text). Runs recorded before that field were all taken for poetry."""
    return record.get("corpus", {}).get("clause_length", 5) is not None


def trained_on_records(record):
    """True when the run's corpus is made of records separated by empty lines (read_utils.RECORDS),
    as config.json (record) says; runs from before records were known are not."""
    return record.get("corpus", {}).get("split") == read_utils.RECORDS


def latest_checkpoint(checkpoint_dir):
    """The path of the run's newest checkpoint (TensorFlow must be imported by then)."""
    import tensorflow as tf

    path = tf.train.latest_checkpoint(checkpoint_dir)
    if path is None:
        raise no_checkpoint_error(checkpoint_dir)
    return path


def no_checkpoint_error(checkpoint_dir):
    return RunError(
        f"{checkpoint_dir} holds no checkpoint yet; let train.py run until it saves one "
        "(--save_every_n, the end of training, or Ctrl-C)"
    )
