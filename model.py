"""The Keras model: Embedding (or one-hot) -> stacked stateful LSTM -> Dense logits.

The LSTM is stateful across windows: the model takes each layer's (h, c) state and returns the
new one, which the caller feeds into the next window of the same streams. Its weights do not
depend on the batch size, so a checkpoint written by training loads into a model of any batch
size for sampling or evaluation.
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
    if config.use_embedding:
        x = layers.Embedding(config.vocab_size, config.embedding_size, dtype=policy, name="embedding")(ids)
    else:
        x = OneHot(config.vocab_size, dtype=policy, name="one_hot")(ids)
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


def zero_states(config, batch_size):
    """The states a stream starts from: (h, c) zeros of every layer."""
    return [tf.zeros([batch_size, config.lstm_size]) for _ in range(2 * config.num_layers)]


def make_train_step(net, optimizer, grad_clip, strategy):
    """The compiled training step, run on every replica of a tf.distribute strategy.

    train_step(x, y, states, starts_epoch) -> (loss, gradient norm, new states). x, y and states
    are per-replica values holding each replica's own streams (distribute.split_batch); loss and
    gradient norm are of the whole global batch. The states start over from zero when the epoch
    does, since the carried ones are from the streams' ends.
    """

    def replica_step(x, y, states, starts_epoch):
        states = [tf.where(starts_epoch, tf.zeros_like(s), s) for s in states]
        global_chars = tf.cast(tf.size(y) * strategy.num_replicas_in_sync, tf.float32)
        with tf.GradientTape() as tape:
            logits, *states = net([x, *states], training=True)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)) / global_chars
        grads = tape.gradient(loss, net.trainable_variables)
        # Clip by the norm of the summed gradient, as one device would. Keras' optimizer sums the
        # replicas' gradients itself and has no way to take sums made here, so with several
        # replicas the sum is made twice (on one device both are no-ops). An infinite norm makes
        # every gradient NaN, so the loss check stops the run.
        total = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
        grad_norm = tf.linalg.global_norm(total)
        grads, _ = tf.clip_by_global_norm(grads, grad_clip if grad_clip > 0 else float("inf"), use_norm=grad_norm)
        optimizer.apply_gradients(zip(grads, net.trainable_variables))
        return loss, grad_norm, states

    @tf.function(reduce_retracing=True)
    def train_step(x, y, states, starts_epoch):
        loss, grad_norm, states = strategy.run(replica_step, args=(x, y, states, starts_epoch))
        sum_ = tf.distribute.ReduceOp.SUM
        mean = tf.distribute.ReduceOp.MEAN
        return strategy.reduce(sum_, loss, axis=None), strategy.reduce(mean, grad_norm, axis=None), states

    return train_step


def lstm_layers(model):
    return [layer for layer in model.layers if isinstance(layer, layers.LSTM)]


def weights_checkpoint(model, **extra):
    """A tf.train.Checkpoint of the model's weights, which fit a model of any batch size.

    Training adds its optimizer and the streams' states as `extra`, to resume exactly.
    """
    return tf.train.Checkpoint(weights=model.weights, **extra)


class Evaluator:
    """Mean next-character loss (nats) of a model's weights on held-out ids.

    It keeps its own model, outside any distribution strategy; `loss(source)` first copies the
    weights of `source` (the training model) into it.
    """

    def __init__(self, config, windows):
        self.config = config
        self.windows = windows
        self.model = build_model(config)

        @tf.function(reduce_retracing=True)
        def summed_loss(x, y, states):
            logits, *states = self.model([x, *states], training=False)
            return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)), states

        self.summed_loss = summed_loss

    def loss(self, source=None):
        if source is not None:
            for target, value in zip(self.model.weights, source.weights):
                target.assign(value)
        states = zero_states(self.config, self.windows.num_streams)
        total = 0.0
        for x, y in self.windows:
            summed, states = self.summed_loss(x, y, states)
            total += float(summed)
        return total / self.windows.num_targets


def init_output_bias(net, counts):
    """Starts the logits at the corpus' character frequencies (counts: occurrences per id).

    With zero biases the model first spends hundreds of steps learning the unigram distribution
    and then sits on a plateau there (about 6.2 nats/char on poetry.txt); starting from the
    log-frequencies skips both, so the LSTM learns context from the first step.
    """
    counts = np.asarray(counts, np.float64) + 0.5
    net.get_layer("logits").bias.assign(np.log(counts / counts.sum()).astype(np.float32))
