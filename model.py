"""The Keras model: Embedding (or one-hot) -> stacked stateful LSTM -> Dense logits.

The model is built for a fixed batch size because stateful LSTM layers keep one state row per
stream. Its weights do not depend on the batch size, so a checkpoint written by training loads
into a model of any batch size for sampling or evaluation.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf
from keras import layers


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    embedding_size: int = 128  # width of the character embedding (unused when one-hot)
    lstm_size: int = 256  # units in each LSTM layer
    num_layers: int = 2  # stacked LSTM layers
    dropout: float = 0.1  # dropout after each LSTM layer, training only
    use_embedding: bool = True  # False feeds one-hot vectors, as the original offered

    def to_json(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj):
        return cls(**{f.name: obj[f.name] for f in dataclasses.fields(cls)})


class OneHot(layers.Layer):
    """Ids to one-hot vectors: the original project's input for small alphabets."""

    def __init__(self, depth, **kwargs):
        super().__init__(**kwargs)
        self.depth = depth

    def call(self, ids):
        return tf.one_hot(ids, self.depth, dtype=self.compute_dtype)


def build_model(config, batch_size):
    """A stateful char-LSTM for batch_size parallel streams of any length.

    The LSTM layers keep Keras' defaults (tanh/sigmoid, no recurrent dropout, no unroll), which
    is what makes them take the cuDNN kernel on a GPU.
    """
    ids = keras.Input(batch_shape=(batch_size, None), dtype="int32", name="ids")
    if config.use_embedding:
        x = layers.Embedding(config.vocab_size, config.embedding_size, name="embedding")(ids)
    else:
        x = OneHot(config.vocab_size, name="one_hot")(ids)
    for i in range(config.num_layers):
        x = layers.LSTM(config.lstm_size, return_sequences=True, stateful=True, name=f"lstm_{i}")(x)
        x = layers.Dropout(config.dropout, name=f"dropout_{i}")(x)
    # Logits in float32 even under a mixed-precision policy, for a stable softmax.
    logits = layers.Dense(config.vocab_size, dtype="float32", name="logits")(x)
    return keras.Model(ids, logits, name="char_rnn")


def lstm_layers(model):
    return [layer for layer in model.layers if isinstance(layer, layers.LSTM)]


def lstm_states(model):
    """The state variables of every LSTM layer: (h, c) per layer, one row per stream."""
    return [v for layer in lstm_layers(model) for v in layer.states]


def reset_states(model):
    for layer in lstm_layers(model):
        layer.reset_state()


def weights_checkpoint(model, **extra):
    """A tf.train.Checkpoint of the model's weights that ignores the per-stream LSTM states.

    The states' shape depends on the batch size, so they are left out here; training adds them
    as `extra` to resume exactly where it stopped.
    """
    return tf.train.Checkpoint(weights=model.weights, **extra)


class Evaluator:
    """Mean next-character loss (nats) of a model's weights on held-out ids.

    It keeps its own stateful model sized for the evaluation streams; `loss(source)` first copies
    the weights of `source` (the training model) into it.
    """

    def __init__(self, config, windows):
        self.windows = windows
        self.model = build_model(config, windows.num_streams)

        @tf.function(input_signature=[tf.TensorSpec([windows.num_streams, None], tf.int32)] * 2)
        def summed_loss(x, y):
            logits = self.model(x, training=False)
            return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))

        self.summed_loss = summed_loss

    def loss(self, source=None):
        if source is not None:
            for target, value in zip(self.model.weights, source.weights):
                target.assign(value)
        reset_states(self.model)
        total = sum(float(self.summed_loss(x, y)) for x, y in self.windows)
        return total / self.windows.num_targets


def init_output_bias(net, ids):
    """Starts the logits at the corpus' character frequencies.

    With zero biases the model first spends hundreds of steps learning the unigram distribution
    and then sits on a plateau there (about 6.2 nats/char on poetry.txt); starting from the
    log-frequencies skips both, so the LSTM learns context from the first step.
    """
    counts = np.bincount(ids, minlength=net.output_shape[-1]).astype(np.float64) + 0.5
    net.get_layer("logits").bias.assign(np.log(counts / counts.sum()).astype(np.float32))
