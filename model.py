"""The Keras model: Embedding (or one-hot) -> stacked stateful LSTM -> Dense logits.

The LSTM is stateful across windows: the model takes each layer's (h, c) state and returns the
new one, which the caller feeds into the next window of the same streams. Its weights do not
depend on the batch size, so a checkpoint written by training loads into a model of any batch
size for sampling or evaluation.
"""

import typing

import keras
import numpy as np
import tensorflow as tf
from keras import layers

import poem_position


class OneHot(layers.Layer):
    """Ids to one-hot vectors: the original project's input for small alphabets."""

    def __init__(self, depth, **kwargs):
        super().__init__(**kwargs)
        self.depth = depth

    def call(self, ids):
        return tf.one_hot(ids, self.depth, dtype=self.compute_dtype)


class ReplicaDropout(layers.Dropout):
    """Keras' Dropout, with its own mask on every tf.distribute replica.

    Keras draws each mask's seed from one seed generator, whose state is mirrored, so every
    replica would draw the same seed and drop the same units of its streams. Adding the replica
    id to the seed keeps replica 0, and so a single device, exactly as Keras' own layer.
    """

    def call(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs
        seed = self.seed_generator.next()
        seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)  # as Keras does for stateless ops
        replica = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int32)
        return tf.nn.experimental.stateless_dropout(inputs, rate=self.rate, seed=seed + tf.stack([0, replica]))


PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


def build_model(config, precision="float32"):
    """The char-LSTM as a function of its state: [ids, *states] -> [logits, *new states].

    states are (h, c) of each LSTM layer, [batch, lstm_size] each (zero_states makes them). The
    caller carries the returned states into the next window, which makes the LSTM stateful across
    windows; holding the states outside the layers lets each replica under tf.distribute keep
    its own streams' states, and lets one set of weights serve any batch size. The LSTM layers
    keep Keras' defaults (tanh/sigmoid, no recurrent dropout, no unroll), which is what makes
    them take the cuDNN kernel on a GPU. precision "bfloat16" computes in bfloat16 with float32
    weights (Keras' mixed_bfloat16 policy); the weights load into either precision.
    """
    policy = PRECISIONS[precision]
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")
    chars, slots, groups = unpack(ids) if config.poem_position else (ids, None, None)
    if config.use_embedding:
        x = layers.Embedding(config.vocab_size, config.embedding_size, dtype=policy, name="embedding")(chars)
    else:
        x = OneHot(config.vocab_size, dtype=policy, name="one_hot")(chars)
    if config.poem_position:
        x = x + layers.Embedding(poem_position.SLOTS, x.shape[-1], dtype=policy, name="slot_embedding")(slots)
        x = x + layers.Embedding(poem_position.GROUPS, x.shape[-1], dtype=policy, name="rhyme_embedding")(groups)
    states, new_states = [], []
    for i in range(config.num_layers):
        state = [keras.Input(shape=(config.lstm_size,), name=f"{part}_{i}") for part in "hc"]
        lstm = layers.LSTM(config.lstm_size, return_sequences=True, return_state=True, dtype=policy, name=f"lstm_{i}")
        x, *new_state = lstm(x, initial_state=state)
        x = ReplicaDropout(config.dropout, dtype=policy, name=f"dropout_{i}")(x)
        states += state
        new_states += new_state
    x = layers.Dense(config.vocab_size, dtype=policy, name="logits")(x)
    # The softmax and the loss always see float32 logits, and the carried states are float32.
    logits = layers.Activation("linear", dtype="float32", name="float32_logits")(x)
    new_states = [layers.Activation("linear", dtype="float32", name=f"{s.name}_out")(s) for s in new_states]
    return keras.Model([ids, *states], [logits, *new_states], name="char_rnn")


def unpack(ids):
    """(character ids, slots, rhyme groups) of ids that poem_position.pack packed."""
    position = keras.ops.floor_divide(ids, poem_position.STRIDE)
    return (keras.ops.mod(ids, poem_position.STRIDE), keras.ops.floor_divide(position, poem_position.GROUPS),
            keras.ops.mod(position, poem_position.GROUPS))


def zero_states(config, batch_size):
    """The states a stream starts from: (h, c) zeros of every layer."""
    return [tf.zeros([batch_size, config.lstm_size]) for _ in range(2 * config.num_layers)]


class Layers(typing.NamedTuple):
    """The model's layers that hold weights, looked up by name here and nowhere else."""

    embedding: layers.Embedding | None  # None when the model feeds one-hot vectors
    one_hot: OneHot | None
    slot_embedding: layers.Embedding | None  # None unless the model reads poem positions (poem_position.py)
    rhyme_embedding: layers.Embedding | None
    lstms: list  # the LSTM layers, first to last
    dropouts: list  # the dropout after each LSTM layer
    logits: layers.Dense


def layers_of(net):
    names = {layer.name for layer in net.layers}
    lstm_names = sorted((name for name in names if name.startswith("lstm_")), key=lambda name: int(name[5:]))
    return Layers(
        embedding=net.get_layer("embedding") if "embedding" in names else None,
        one_hot=net.get_layer("one_hot") if "one_hot" in names else None,
        slot_embedding=net.get_layer("slot_embedding") if "slot_embedding" in names else None,
        rhyme_embedding=net.get_layer("rhyme_embedding") if "rhyme_embedding" in names else None,
        lstms=[net.get_layer(name) for name in lstm_names],
        dropouts=[net.get_layer(f"dropout_{i}") for i in range(len(lstm_names))],
        logits=net.get_layer("logits"),
    )


def is_bfloat16(net):
    """True for a model built with precision "bfloat16" (its layers compute in bfloat16)."""
    return layers_of(net).logits.compute_dtype == "bfloat16"


def weights_checkpoint(model, **extra):
    """A tf.train.Checkpoint of the model's weights, which fit a model of any batch size.

    Training adds its optimizer and the streams' states as `extra`, to resume exactly.
    """
    return tf.train.Checkpoint(weights=model.weights, **extra)


def init_output_bias(net, counts):
    """Starts the logits at the corpus' character frequencies (counts: occurrences per id).

    With zero biases the model first spends hundreds of steps learning the unigram distribution
    and then sits on a plateau there (about 6.2 nats/char on poetry.txt); starting from the
    log-frequencies skips both, so the LSTM learns context from the first step.
    """
    counts = np.asarray(counts, np.float64) + 0.5
    layers_of(net).logits.bias.assign(np.log(counts / counts.sum()).astype(np.float32))
