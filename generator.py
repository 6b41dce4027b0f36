"""Text generation from a checkpoint directory: a compiled loop over a batch of streams.

The whole generation loop (prime, then sample one character per step for every stream) runs
inside one tf.function, so Python is not involved per character.
"""

import json
import os

import numpy as np
import tensorflow as tf

import model as model_lib
import read_utils

NEWLINE = "\n"


class CheckpointError(read_utils.InputError):
    """A checkpoint directory that cannot be loaded; the message says why and what to do."""


def load_run(checkpoint_dir):
    """(ModelConfig, Vocab, checkpoint path) of a training run directory."""
    if not os.path.isdir(checkpoint_dir):
        raise CheckpointError(
            f"checkpoint directory {checkpoint_dir} does not exist; train first "
            f"(python train.py --name NAME) or pass --checkpoint_dir of a trained run"
        )
    try:
        with open(os.path.join(checkpoint_dir, "config.json"), encoding="utf-8") as f:
            config = model_lib.ModelConfig.from_json(json.load(f)["model"])
        vocab = read_utils.Vocab.load(os.path.join(checkpoint_dir, "vocab.json"))
    except FileNotFoundError as e:
        raise CheckpointError(
            f"{checkpoint_dir} has no {os.path.basename(e.filename)}; it is not a finished CharRNN "
            "run: train into it with train.py, or pass another --checkpoint_dir"
        ) from None
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"config.json or vocab.json in {checkpoint_dir} is corrupt ({type(e).__name__}: {e}); "
            "restore them from the run, or retrain under a new --name"
        ) from None
    if config.vocab_size != len(vocab):
        raise CheckpointError(
            f"config.json in {checkpoint_dir} says {config.vocab_size} characters but vocab.json has "
            f"{len(vocab)}; the two files come from different runs"
        )
    path = tf.train.latest_checkpoint(checkpoint_dir)
    if path is None:
        raise CheckpointError(
            f"{checkpoint_dir} holds no checkpoint yet; let train.py run until it saves one "
            "(--save_every_n, the end of training, or Ctrl-C)"
        )
    return config, vocab, path


def restore_weights(net, path):
    """Loads trained weights into a model of any batch size; a damaged file is a CheckpointError."""
    try:
        model_lib.weights_checkpoint(net).read(path).expect_partial().assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"cannot load checkpoint {path} ({first_line[:200]}); the files are truncated or from "
            "another model: retrain, or point --checkpoint_dir at an intact run"
        ) from None


def filter_logits(logits, temperature, top_k, top_p):
    """Logits rescaled by temperature with everything outside the top-k and the nucleus at -inf.

    top_k = 0 and top_p = 1 switch those filters off. The most likely token always survives.
    """
    logits = logits / tf.maximum(temperature, 1e-6)
    neg_inf = tf.fill(tf.shape(logits), float("-inf"))
    if top_k > 0:
        kth = tf.math.top_k(logits, k=top_k).values[:, -1:]
        logits = tf.where(logits < kth, neg_inf, logits)
    if top_p < 1.0:
        sorted_logits = tf.sort(logits, direction="DESCENDING")
        probs = tf.nn.softmax(sorted_logits)
        mass_before = tf.cumsum(probs, axis=-1, exclusive=True)
        # The nucleus: the smallest prefix whose mass reaches top_p; its last logit is the cut.
        in_nucleus = mass_before < top_p
        cut = tf.reduce_min(tf.where(in_nucleus, sorted_logits, sorted_logits[:, :1]), axis=-1, keepdims=True)
        logits = tf.where(logits < cut, neg_inf, logits)
    return logits


def choose(logits, temperature, top_k, top_p, seed):
    """One id per row: greedy when temperature is 0, otherwise sampled from the filtered logits."""
    if temperature == 0:
        return tf.argmax(logits, axis=-1, output_type=tf.int32)
    filtered = filter_logits(logits, temperature, top_k, top_p)
    return tf.random.stateless_categorical(filtered, 1, seed=seed, dtype=tf.int32)[:, 0]


class Generator:
    """Generates num_streams texts at once from a trained run's weights.

    A stream first writes one throwaway line (the burn-in): a model trained on long streams
    rarely saw the all-zero state it starts from, and its first line from there is often
    malformed. From the burn-in's line break on, the stream is at a natural line start: the
    prompt is forced in, then the text is sampled and kept.
    """

    BURN_IN_LIMIT = 100  # a stream that writes no line break by then starts anyway

    def __init__(self, config, vocab, checkpoint_path, num_streams=1, banned=""):
        self.vocab = vocab
        self.num_streams = num_streams
        self.model = model_lib.build_model(config, num_streams)
        restore_weights(self.model, checkpoint_path)
        mask = np.zeros(len(vocab), np.float32)
        mask[0] = -np.inf  # the unknown-character token is never produced
        for char in banned:
            mask[vocab.id_of(char)] = -np.inf
        self.mask = tf.constant(mask)
        self.newline = vocab.id_of(NEWLINE)  # 0 when the corpus has no line breaks: no burn-in then
        self.burn_in_limit = self.BURN_IN_LIMIT if self.newline else 0
        self._loop = tf.function(self._generate)

    def generate(self, prompt, max_length, max_lines=0, temperature=1.0, top_k=0, top_p=1.0, seed=0):
        """num_streams texts that begin with prompt (all of whose characters are in the vocabulary).

        Each stops after max_lines line breaks (0: no limit) or max_length characters.
        """
        # One padding entry so that an empty prompt still gives a tensor to gather from.
        forced = np.append(self.vocab.encode(prompt), 0).astype(np.int32)
        ids, kept = self._loop(
            tf.constant(forced),
            tf.constant(len(prompt), tf.int32),
            tf.constant(max_length, tf.int32),
            tf.constant(max_lines, tf.int32),
            tf.constant(float(temperature)),
            tf.constant(int(top_k), tf.int32),
            tf.constant(float(top_p)),
            tf.constant([seed, 0], tf.int64),
        )
        return [self.vocab.decode(row[keep]) for row, keep in zip(ids.numpy(), kept.numpy())]

    def _generate(self, forced, prompt_length, max_length, max_lines, temperature, top_k, top_p, seed):
        n = self.num_streams
        model_lib.reset_states(self.model)
        logits = self.model(tf.fill([n, 1], self.newline), training=False)[:, -1, :]
        ids = tf.TensorArray(tf.int32, size=0, dynamic_size=True, element_shape=[n])
        kept = tf.TensorArray(tf.bool, size=0, dynamic_size=True, element_shape=[n])
        started = tf.fill([n], self.burn_in_limit == 0)
        written = tf.zeros([n], tf.int32)  # characters kept so far
        lines = tf.zeros([n], tf.int32)
        for i in tf.range(max_length + self.burn_in_limit):
            active = started & (written < max_length) & ((max_lines <= 0) | (lines < max_lines))
            if not tf.reduce_any(active | ~started):
                break
            sampled = choose(logits + self.mask, temperature, top_k, top_p, seed + tf.cast([0, i], tf.int64))
            use_prompt = started & (written < prompt_length)
            next_ids = tf.where(use_prompt, tf.gather(forced, tf.minimum(written, prompt_length)), sampled)
            is_newline = tf.equal(next_ids, self.newline)
            ids = ids.write(i, next_ids)
            kept = kept.write(i, active)
            written += tf.cast(active, tf.int32)
            lines += tf.cast(active & is_newline, tf.int32)
            started |= is_newline | (i + 1 >= self.burn_in_limit)
            logits = self.model(next_ids[:, None], training=False)[:, -1, :]
        return tf.transpose(ids.stack()), tf.transpose(kept.stack())
