"""What train.py measures and shows in TensorBoard besides its training loss.

- the validation loss (Evaluator), which evaluate.py also reports;
- poems sampled from each checkpoint (text) and their poem metrics (scalars);
- the run's settings, once, for the HParams dashboard;
- the character embedding with the characters it embeds, for the projector.
"""

import os
import typing

import tensorflow as tf
from tensorboard.plugins import projector
from tensorboard.plugins.hparams import api as hparams_api

import cpu_training
import generator
import model as model_lib

METADATA_FILE = "metadata.tsv"


class Evaluator:
    """Mean next-character loss (nats) of a model's weights on held-out ids.

    It keeps its own model, outside any distribution strategy; `loss(source)` first copies the
    weights of `source` (the training model) into it.
    """

    def __init__(self, config, windows):
        self.config = config
        self.windows = windows
        self.model = model_lib.build_model(config)

        @tf.function(reduce_retracing=True)
        def summed_losses(x, y, states):
            """(loss summed over all targets, summed over the unknown ones, new states)."""
            logits, *states = self.model([x, *states], training=False)
            losses = cpu_training.cross_entropy(logits, y)
            return tf.reduce_sum(losses), tf.reduce_sum(tf.where(tf.equal(y, 0), losses, 0.0)), states

        self.summed_losses = summed_losses

    def loss(self, source=None):
        """The mean loss over every target, unknown characters included."""
        return self.losses(source).all

    def losses(self, source=None):
        """Losses: the mean loss over all targets, and over those in the vocabulary, and the share unknown."""
        if source is not None:
            for target, value in zip(self.model.weights, source.weights):
                target.assign(value)
        states = model_lib.zero_states(self.config, self.windows.num_streams)
        total = unknown = 0.0
        for x, y in self.windows:
            summed, summed_unknown, states = self.summed_losses(x, y, states)
            total, unknown = total + float(summed), unknown + float(summed_unknown)
        targets, unknown_targets = self.windows.num_targets, self.windows.num_unknown_targets
        known = (total - unknown) / (targets - unknown_targets) if targets > unknown_targets else float("nan")
        return Losses(total / targets, known, unknown_targets / targets)


class Losses(typing.NamedTuple):
    all: float  # mean loss per character, nats
    known: float  # mean loss per character in the vocabulary (the unknown ones left out)
    unknown_share: float  # the share of characters outside the vocabulary


def log_run_config(logdir, run_config):
    """The settings of config.json as hyperparameters of the run.

    They go to the logdir itself, above train/ and validation/, which the HParams dashboard then
    treats as one session whose metrics are the scalars below it.
    """
    values = {k: v for k, v in (run_config["model"] | run_config["training"]).items() if v is not None}  # unset flags
    values["corpus"] = run_config["corpus"]["path"]
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        hparams_api.hparams(values)
    writer.close()


def poems_markdown(poems, temperature, start_string):
    """A line saying how the poems were made, then the poems in a code block.

    A code block keeps every line break and shows generated text literally, even characters
    that Markdown would take for formatting.
    """
    start = f"start string {start_string!r}" if start_string else "no start string"
    header = f"{len(poems)} poems, temperature {temperature:g}, {start}"
    body = "\n\n".join("\n".join("    " + line for line in poem.rstrip("\n").split("\n")) for poem in poems)
    return f"{header}\n\n{body}"


class PoemSampler:
    """Samples a few poems from a checkpoint; in training, logs them with their poem metrics.

    generator.Generator loads its weights from a checkpoint path, so training samples right
    after each save.
    """

    LINES = 4  # a quatrain (with records, a sample ends with its poem instead)
    MAX_LENGTH = 200  # characters: room for a quatrain of either form; stops a model without lines
    START_STRING = ""  # the model begins where it likes, which is also what the copy rate should judge

    def __init__(self, config, vocab, num_poems, temperature, seed, scorer=None, records=False):
        self.config = config
        self.records = records  # a corpus of records (tang's poems): a sample is a whole poem, title first
        self.vocab = vocab
        self.num_poems = num_poems
        self.temperature = temperature
        self.seed = seed  # the same at every checkpoint, so only the weights change the poems
        self.scorer = scorer

    def sample(self, checkpoint_path):
        gen = generator.Generator(self.config, self.vocab, checkpoint_path, self.num_poems, records=self.records)
        return gen.generate(
            self.START_STRING, self.MAX_LENGTH, max_lines=self.LINES, temperature=self.temperature, seed=self.seed
        )

    def log(self, checkpoint_path, step):
        """Writes the poems and their scores to the default summary writer."""
        poems = self.sample(checkpoint_path)
        tf.summary.text("poems/samples", poems_markdown(poems, self.temperature, self.START_STRING), step=step)
        for name, value in self.scorer.score(poems).items():
            tf.summary.scalar(f"poems/{name}", value, step=step)


def character_label(char):
    """A character as one visible TSV field: line breaks, tabs and spaces are shown quoted."""
    return char if char.isprintable() and not char.isspace() else repr(char)


class EmbeddingProjector:
    """Keeps the projector's view of the character embedding up to date in the logdir.

    The logdir holds a checkpoint of the embedding alone, metadata.tsv with the character of
    each row, and projector_config.pbtxt naming the tensor and the metadata. TensorBoard finds
    the checkpoint through the logdir's own "checkpoint" file, so the logdir must not be the
    training checkpoint directory, whose "checkpoint" file that would overwrite.
    """

    TENSOR_NAME = "embedding/.ATTRIBUTES/VARIABLE_VALUE"

    def __init__(self, logdir, net, vocab):
        os.makedirs(logdir, exist_ok=True)
        checkpoint = tf.train.Checkpoint(embedding=model_lib.layers_of(net).embedding.embeddings)
        self.manager = tf.train.CheckpointManager(checkpoint, logdir, max_to_keep=1, checkpoint_name="embedding")
        with open(os.path.join(logdir, METADATA_FILE), "w", encoding="utf-8") as f:
            f.writelines(character_label(char) + "\n" for char in vocab.chars)
        config = projector.ProjectorConfig()
        embedding = config.embeddings.add()
        embedding.tensor_name = self.TENSOR_NAME
        embedding.metadata_path = METADATA_FILE
        projector.visualize_embeddings(logdir, config)

    def save(self, step):
        self.manager.save(checkpoint_number=step)
