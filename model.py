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


PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


def build_model(config, batch_size, precision="float32"):
    """A stateful char-LSTM for batch_size parallel streams of any length.

    The LSTM layers keep Keras' defaults (tanh/sigmoid, no recurrent dropout, no unroll), which
    is what makes them take the cuDNN kernel on a GPU. precision "bfloat16" computes in bfloat16
    with float32 weights (Keras' mixed_bfloat16 policy); the weights load into either precision.
    """
    policy = PRECISIONS[precision]
    ids = keras.Input(batch_shape=(batch_size, None), dtype="int32", name="ids")
    if config.use_embedding:
        x = layers.Embedding(config.vocab_size, config.embedding_size, dtype=policy, name="embedding")(ids)
    else:
        x = OneHot(config.vocab_size, dtype=policy, name="one_hot")(ids)
    for i in range(config.num_layers):
        x = layers.LSTM(config.lstm_size, return_sequences=True, stateful=True, dtype=policy, name=f"lstm_{i}")(x)
        x = layers.Dropout(config.dropout, dtype=policy, name=f"dropout_{i}")(x)
    x = layers.Dense(config.vocab_size, dtype=policy, name="logits")(x)
    # The softmax and the loss always see float32 logits.
    logits = layers.Activation("linear", dtype="float32", name="float32_logits")(x)
    return keras.Model(ids, logits, name="char_rnn")


def make_train_step(net, optimizer, grad_clip):
    """The compiled training step: one window for every stream, the LSTM state carried over."""

    @tf.function(reduce_retracing=True)
    def train_step(x, y, starts_epoch):
        if starts_epoch:  # the streams start over, so the carried state would be from their end
            reset_states(net)
        with tf.GradientTape() as tape:
            logits = net(x, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        grads = tape.gradient(loss, net.trainable_variables)
        grads, grad_norm = tf.clip_by_global_norm(grads, grad_clip if grad_clip > 0 else float("inf"))
        optimizer.apply_gradients(zip(grads, net.trainable_variables))
        return loss, grad_norm

    return train_step


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
