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


def auto_precision(cpuinfo="/proc/cpuinfo"):
    """The precision to train in when the user names none.

    bfloat16 on a CPU with AMX (Linux lists amx_bf16 among its flags): there its matmuls run about
    3 times as fast as float32's, and the loss curve is the same (README, Performance). float32
    elsewhere: on a GPU the LSTM layers take cuDNN's float32 kernel, and CPUs without AMX were
    not measured.
    """
    if tf.config.list_physical_devices("GPU"):
        return "float32"
    try:
        with open(cpuinfo) as f:
            flags = f.read().split()
    except OSError:
        return "float32"
    return "bfloat16" if "amx_bf16" in flags else "float32"


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


# Training steps per compiled call: train.py's --steps_per_execution default. The small model in
# bfloat16 trains 1.12 times as fast as with one step a call (4 steps: 1.11, 16: 1.10; README, Performance).
STEPS_PER_CALL = 8


def make_train_steps(net, optimizer, grad_clip, strategy, fused=None):
    """The compiled training call: several training steps, run on every replica of a tf.distribute strategy.

    train_steps(x, y, states, starts_epoch) -> (losses [n], gradient norms [n], new states) runs
    n = len(starts_epoch) steps, step i on the windows x[:, i], y[:, i]. x, y [streams, n, T] and
    states are per-replica values holding each replica's own streams (distribute.split_batch);
    losses and gradient norms are of the whole global batch. A step's states start over from zero
    when starts_epoch[i] says its windows start the epoch over, since the carried ones are from
    the streams' ends. The steps run in a tf.while_loop, traced once for any n. Between calls the
    cores idle while Python takes the results and makes the next call: 2.0-3.3 ms from one step's
    last weight update to the next step's first operation, against 0.7 ms inside a call (profiled,
    small model; README, Performance).
    fused (default: when there is no GPU) computes the model with fused_losses instead of its
    Keras layers, which on a GPU take cuDNN.
    """
    losses_of = fused_losses if (use_fused_lstm() if fused is None else fused) else keras_losses

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


class Adam(keras.optimizers.Adam):
    """Keras' Adam, with each variable's update one TensorFlow kernel (ResourceApplyAdam).

    Keras writes the update as about a dozen operations, each a pass over the variable; for the
    small model they took 4.2 ms a step, the fused kernel 1.7 ms. It does the same arithmetic
    (m, v, then var -= lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon)), on
    the same slot variables, so checkpoints and results are Keras' own. amsgrad keeps Keras' code.
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].value.handle,
            v=self._velocities[index].value.handle,
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.convert_to_tensor(tf.cast(gradient, dtype)),  # an embedding's IndexedSlices made dense, as Keras does
        )


@tf.custom_gradient
def cross_entropy(logits, targets):
    """-log softmax(logits)[target] per position: tf.nn.sparse_softmax_cross_entropy_with_logits.

    Written out because TensorFlow's kernel is slow on CPU: for a batch of 32x26 characters over
    3,501 it took 17 ms forward and backward, against 7 ms written out with max, exp and sum (less
    now, on the softmax kernel). The gradient, softmax minus the target's one-hot, reuses the
    forward pass' probabilities and subtracts at the targets only.
    """
    shape = tf.shape(logits)
    flat = tf.reshape(logits, [-1, shape[-1]])
    at_targets = target_indices(targets)
    probs, losses = softmax_losses(flat, at_targets)

    def grad(upstream):
        dlogits = minus_one_hot(probs, at_targets) * tf.reshape(upstream, [-1, 1])
        return tf.reshape(dlogits, shape), None

    return tf.reshape(losses, shape[:-1]), grad


def target_indices(targets):
    """[n, 2] indices (position, target) into [n, vocab] rows, of targets [...] flattened."""
    targets = tf.reshape(tf.cast(targets, tf.int32), [-1])
    return tf.stack([tf.range(tf.size(targets)), targets], 1)


def softmax_losses(logits, at_targets):
    """(softmax(logits), -log softmax(logits)[target]) of [n, vocab] logits, in float32 or bfloat16.

    TensorFlow's softmax is one pass (oneDNN's kernel): twice as fast here as max, exp and sum
    in Eigen's kernels, which this build compiles without AVX2. A target's probability underflows
    to 0 only when its logit is about 87 below the row's top; the losses then come from logsumexp.
    """
    probs = tf.nn.softmax(logits)
    at_target = tf.cast(tf.gather_nd(probs, at_targets), tf.float32)

    def from_logits():
        logits32 = tf.cast(logits, tf.float32)
        return tf.reduce_logsumexp(logits32, -1) - tf.gather_nd(logits32, at_targets)

    losses = tf.cond(tf.reduce_min(at_target) > 0, lambda: -tf.math.log(at_target), from_logits)
    return probs, losses


def minus_one_hot(probs, at_targets):
    """probs with 1 taken off at each row's target: the losses' gradient with respect to the logits."""
    return tf.tensor_scatter_nd_sub(probs, at_targets, tf.ones([tf.shape(at_targets)[0]], probs.dtype))


def output_losses(x, kernel, bias, targets, bfloat16):
    """cross_entropy(x @ kernel + bias, targets): the output layer and the loss as one function.

    x [..., units], targets [...]. Its gradient skips passes over the [positions, vocab] logits'
    gradient: each row's upstream gradient goes onto the matmuls' small side (their output, or
    their other input). The bias rides in the matmuls as a row under the kernel, against a column
    of ones, so neither direction has a pass of its own for it. Under bfloat16 the softmax reads
    the matmul's bfloat16 product, and its probabilities feed the gradient's matmuls as they are.
    """
    shape = tf.shape(targets)
    flat = tf.reshape(x, [-1, x.shape[-1]])
    at_targets = target_indices(targets)
    dtype = tf.bfloat16 if bfloat16 else tf.float32

    @tf.custom_gradient
    def losses_of(flat, kernel, bias):
        inputs = with_one(flat)
        # The vocabulary padded to a multiple of 32, oneDNN's fast case (3,501 -> 3,520: 0.5 ms less
        # per matmul, small model); the bias row puts the padding's logits at -1e30, probability 0.
        vocab = kernel.shape[1]
        pad = -vocab % 32
        padded_kernel = tf.cast(tf.pad(kernel, [[0, 0], [0, pad]]), dtype)  # cast once, for both directions
        padded_bias = tf.cast(tf.pad(bias, [[0, pad]], constant_values=-1e30), dtype)
        weights = tf.concat([padded_kernel, padded_bias[None]], 0)
        probs, losses = softmax_losses(tf.matmul(tf.cast(inputs, dtype), weights), at_targets)

        def grad(upstream):
            d_logits = minus_one_hot(probs, at_targets)  # times upstream, row by row
            # Against the kernel alone: the bias row's share of d_inputs would be dropped, and a
            # 129-wide product took 1.1 ms longer than a 128-wide one (bfloat16, small model).
            d_flat = matmul(d_logits, padded_kernel, bfloat16, transpose_b=True) * upstream[:, None]
            d_weights = matmul(inputs * upstream[:, None], d_logits, bfloat16, transpose_a=True)[:, :vocab]
            return d_flat, d_weights[:-1], d_weights[-1]

        return losses, grad

    return tf.reshape(losses_of(flat, kernel, bias), shape)


# --- the fused LSTM: the same model and weights, computed by hand for CPU training --------------

def use_fused_lstm():
    """On a GPU the Keras LSTM layers take cuDNN's kernel; elsewhere fused_losses is faster."""
    return not tf.config.list_physical_devices("GPU")


def keras_losses(net, ids, targets, states):
    """(per-position losses, new states) of the Keras model in training mode."""
    logits, *states = net([ids, *states], training=True)
    return cross_entropy(logits, targets), states


def fused_losses(net, ids, targets, states):
    """keras_losses computed by hand: fused_hidden, then output_losses."""
    x, states = fused_hidden(net, ids, states, training=True)
    output = net.get_layer("logits")
    losses = output_losses(x, output.kernel.value, output.bias.value, tf.transpose(targets), is_bfloat16(net))
    return tf.transpose(losses), states


# Each layer runs its window in this many pieces, so that the next layer can start on a piece
# while this one computes the next: the two layers' chains of small operations then run on both
# cores, forward and backward (small model, bfloat16: 17.3 -> 14.4 ms for the LSTM layers).
PIPELINE_PIECES = 2


def fused_hidden(net, ids, states, training):
    """(the last LSTM layer's outputs after dropout, time-major [T, B, U]; new states) of the
    model on ids [B, T], by hand.

    lstm_sequence takes the place of the Keras LSTM layers: the same weights and the same function
    (in float32 equal to rounding); each layer's input projection is one matmul per piece of the
    window (PIPELINE_PIECES). Under the bfloat16 policy every matmul rounds its inputs and product
    to bfloat16, which TensorFlow runs on AMX here, and the gate arithmetic and the states stay
    float32. The window length must be known when the step is traced. Time-major, each step's
    slice is one contiguous block, which slicing and stacking read and write without gathering.
    """
    bfloat16 = is_bfloat16(net)
    if any(layer.name == "embedding" for layer in net.layers):
        # The float32 table's rows: the layer itself would first cast its whole table under the
        # bfloat16 policy, and the first matmul rounds these rows to bfloat16 all the same.
        x = tf.gather(net.get_layer("embedding").embeddings.value, tf.transpose(ids))
    else:
        x = tf.cast(net.get_layer("one_hot")(tf.transpose(ids)), tf.float32)
    steps = ids.shape[1]
    cuts = sorted({steps * j // PIPELINE_PIECES for j in range(PIPELINE_PIECES + 1)})
    bounds = list(zip(cuts, cuts[1:]))
    pieces = tf.split(x, [end - start for start, end in bounds])
    new_states = []
    for i, layer in enumerate(lstm_layers(net)):
        cell = layer.cell
        h, c = states[2 * i], states[2 * i + 1]
        mask = dropout_mask(net.get_layer(f"dropout_{i}"), [tf.shape(ids)[0], steps, cell.units], training)
        outputs = []
        for (start, end), piece in zip(bounds, pieces):
            projected = dense(piece, cell.kernel.value, cell.bias.value, bfloat16)
            output, h, c = lstm_sequence(projected, h, c, cell.recurrent_kernel.value, bfloat16)
            outputs.append(output if mask is None else output * mask[start:end])
        pieces = outputs
        new_states += [h, c]
    return tf.concat(pieces, 0), new_states


def dropout_mask(dropout, shape, training):
    """The mask, scaled by 1 / (1 - rate), that the dropout layer draws for inputs of this shape
    [B, T, U], time-major; None when it keeps every unit. call() keeps it float32, where the layer
    would cast to bfloat16."""
    if not training or dropout.rate == 0:
        return None
    return tf.transpose(dropout.call(tf.ones(shape), training=True), [1, 0, 2])


def with_one(x):
    """x [n, k] with a column of ones appended: [n, k + 1], to meet a bias row under a kernel."""
    return tf.concat([x, tf.ones_like(x[:, :1])], 1)


def is_bfloat16(net):
    return net.get_layer("logits").compute_dtype == "bfloat16"


def matmul(a, b, bfloat16, transpose_a=False, transpose_b=False):
    """a times b (either transposed first); bfloat16 rounds both inputs and the product to
    bfloat16, returned as float32.

    TensorFlow's CPU kernels have no bfloat16 x bfloat16 -> float32 matmul, so the product is
    rounded too; generator.matmul, which runs inside XLA, keeps float32 sums.
    """
    if bfloat16:
        a, b = tf.cast(a, tf.bfloat16), tf.cast(b, tf.bfloat16)
    return tf.cast(tf.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b), tf.float32)


def dense(x, kernel, bias, bfloat16):
    """x [..., n] times kernel [n, m] plus bias, as one matmul over all leading positions.

    The bias rides in the matmul as a row under the kernel (as in output_losses), so its gradient
    is the last row of the kernel's: summing the gradient over the positions instead took 30 times
    as long (Eigen's column sum: 250 against 8 us for [416, 512]), at the end of the backward
    pass, where the update waits for it.
    """
    flat = tf.reshape(x, [-1, x.shape[-1]])

    @tf.custom_gradient
    def product(flat, kernel, bias):
        inputs = with_one(flat)

        def grad(d_product):
            d_flat = matmul(d_product, kernel, bfloat16, transpose_b=True)  # the bias row has no input to reach
            d_weights = matmul(inputs, d_product, bfloat16, transpose_a=True)
            return d_flat, d_weights[:-1], d_weights[-1]

        return matmul(inputs, tf.concat([kernel, bias[None]], 0), bfloat16), grad

    return tf.reshape(product(flat, kernel, bias), tf.concat([tf.shape(x)[:-1], [-1]], 0))


def lstm_sequence(projected, h, c, recurrent_kernel, bfloat16=False):
    """Keras' LSTM layer over a window: (outputs [T, B, U], h, c) from (h, c) and the inputs' projections.

    projected [T, B, 4U] (time-major) is the inputs times the layer's kernel plus its bias (gates in Keras'
    order i, f, c, o). The gradient is written out the way cuDNN's is: the backward loop only
    carries the state gradients through time, and the recurrent kernel's gradient is then one
    [U, B*T] x [B*T, 4U] matmul instead of T small ones. TensorFlow's own gradient of the loop
    took 1.6 times as long (small model, one layer).
    """
    steps = projected.shape[0]
    if steps is None:
        raise ValueError("lstm_sequence needs the window length when it is traced")
    compute_dtype = tf.bfloat16 if bfloat16 else tf.float32  # matmul casts to it; a cast to the same type is free

    @tf.custom_gradient
    def window(projected, h0, c0, recurrent_kernel):
        kernel = tf.cast(recurrent_kernel, compute_dtype)
        h, c, outputs, saved = h0, c0, [], []
        for t in range(steps):
            z = projected[t] + matmul(h, kernel, bfloat16)
            i, f, g, o = tf.split(z, 4, axis=1)
            i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
            c_before = c
            c = f * c + i * g
            tanh_c = tf.tanh(c)
            h = o * tanh_c
            outputs.append(h)
            # The backward step's factors (d_c += d_h * to_c; d_z = [d_c, d_c, d_c, d_h] * gates),
            # computed here, where nothing waits on them, leave its loop a short chain a step.
            to_c = o * (1 - tanh_c * tanh_c)
            gates = tf.concat([g * i * (1 - i), c_before * f * (1 - f), i * (1 - g * g), tanh_c * o * (1 - o)], 1)
            saved.append((f, to_c, gates))
        outputs = tf.stack(outputs)

        def grad(d_outputs, d_h, d_c):
            kernel_t = tf.transpose(kernel)
            d_z = [None] * steps
            for t in reversed(range(steps)):
                f, to_c, gates = saved[t]
                d_h = d_outputs[t] + d_h
                d_c = d_c + d_h * to_c
                d_z[t] = tf.concat([d_c, d_c, d_c, d_h], 1) * gates
                d_c = d_c * f
                d_h = matmul(d_z[t], kernel_t, bfloat16)
            d_z = tf.stack(d_z)
            units = recurrent_kernel.shape[0]
            h_before = tf.reshape(tf.concat([h0[None], outputs[:-1]], 0), [-1, units])
            d_kernel = matmul(h_before, tf.reshape(d_z, [-1, 4 * units]), bfloat16, transpose_a=True)
            return d_z, d_h, d_c, d_kernel

        return (outputs, h, c), grad

    return window(projected, h, c, recurrent_kernel)


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
            return tf.reduce_sum(cross_entropy(logits, y)), states

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
