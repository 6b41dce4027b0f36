"""The hand-written CPU training path: the Keras model's training loss, computed faster on a CPU.

On a GPU the Keras LSTM layers take cuDNN's kernel. On a CPU they run one small TensorFlow op at a
time, so training computes the same function by hand instead (losses):
- lstm_window: one LSTM layer over a window, unrolled, with its gradient written out as cuDNN's is;
- output_losses: the output layer and the cross-entropy as one function, with a gradient that
  skips passes over the [positions, vocabulary] logits;
- affine: x times [kernel; bias], the bias riding in the matmul as a row, so that its gradient is a
  matmul's row rather than a column sum;
- Adam: Keras' Adam with each update one TensorFlow kernel (ResourceApplyAdam).

What it must equal: the Keras model's per-position losses in training mode, their gradients with
respect to every weight, and the carried states, in float32 to rounding (under the bfloat16
policy, to bfloat16 rounding); Adam: Keras' own Adam's weights and slots. tests/test_cpu_training.py
proves each: the logits, states and gradients of the model with and without embedding, dropout
on, two layers, against the Keras layers (test_cpu_path_*); output_losses and cross_entropy against
TensorFlow's loss; Adam against keras.optimizers.Adam; the training steps by hand against the
steps through Keras. tests/test_trainer.py checks one call of several steps against one step a call.
"""

import keras
import tensorflow as tf

import model as model_lib
import tuning


def is_faster_here():
    """On a GPU the Keras LSTM layers take cuDNN's kernel; elsewhere this path is faster."""
    return not tf.config.list_physical_devices("GPU")


def losses(net, ids, targets, states):
    """(per-position losses [B, T], new states) of the model in training mode, by hand:
    lstm_stack, then output_losses."""
    x, states = lstm_stack(net, ids, states, training=True)
    output = model_lib.layers_of(net).logits
    per_position = output_losses(x, output.kernel.value, output.bias.value, tf.transpose(targets),
                                 model_lib.is_bfloat16(net))
    return tf.transpose(per_position), states


def lstm_stack(net, ids, states, training):
    """(the last LSTM layer's outputs after dropout, time-major [T, B, U]; new states) of the
    model on ids [B, T].

    lstm_window takes the place of the Keras LSTM layers: the same weights and the same function.
    Each layer's input projection is one matmul per piece of the window (tuning.PIPELINE_PIECES), so
    the next layer can start on a piece while this one computes the next. Under the bfloat16 policy
    every matmul rounds its inputs and product to bfloat16; the gate arithmetic and the states stay
    float32. The window length must be known when the step is traced. Time-major, each step's slice
    is one contiguous block.
    """
    bfloat16 = model_lib.is_bfloat16(net)
    found = model_lib.layers_of(net)
    time_major = tf.transpose(ids)
    chars, slots, groups = model_lib.unpack(time_major) if found.slot_embedding is not None else (time_major, None, None)
    if found.embedding is not None:
        # The float32 table's rows: the layer itself would first cast its whole table under the
        # bfloat16 policy, and the first matmul rounds these rows to bfloat16 all the same.
        x = tf.gather(found.embedding.embeddings.value, chars)
    else:
        x = tf.cast(found.one_hot(chars), tf.float32)
    if found.slot_embedding is not None:
        x += tf.gather(found.slot_embedding.embeddings.value, slots) + tf.gather(found.rhyme_embedding.embeddings.value, groups)
    steps = ids.shape[1]
    cuts = sorted({steps * j // tuning.PIPELINE_PIECES for j in range(tuning.PIPELINE_PIECES + 1)})
    bounds = list(zip(cuts, cuts[1:]))
    pieces = tf.split(x, [end - start for start, end in bounds])
    new_states = []
    for i, (layer, dropout) in enumerate(zip(found.lstms, found.dropouts)):
        cell = layer.cell
        h, c = states[2 * i], states[2 * i + 1]
        mask = dropout_mask(dropout, [tf.shape(ids)[0], steps, cell.units], training)
        outputs = []
        for (start, end), piece in zip(bounds, pieces):
            projected = affine(piece, cell.kernel.value, cell.bias.value, bfloat16)
            output, h, c = lstm_window(projected, h, c, cell.recurrent_kernel.value, bfloat16)
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


def lstm_window(projected, h, c, recurrent_kernel, bfloat16=False):
    """Keras' LSTM layer over a window: (outputs [T, B, U], h, c) from (h, c) and the inputs' projections.

    projected [T, B, 4U] (time-major) is the inputs times the layer's kernel plus its bias (gates in
    Keras' order i, f, c, o). The gradient is written out the way cuDNN's is: the backward loop only
    carries the state gradients through time, and the recurrent kernel's gradient is then one
    [U, B*T] x [B*T, 4U] matmul instead of T small ones.
    """
    steps = projected.shape[0]
    if steps is None:
        raise ValueError("lstm_window needs the window length when it is traced")
    compute_dtype = tf.bfloat16 if bfloat16 else tf.float32  # rounded_matmul casts to it; a cast to the same type is free

    @tf.custom_gradient
    def window(projected, h0, c0, recurrent_kernel):
        kernel = tf.cast(recurrent_kernel, compute_dtype)
        h, c, outputs, saved = h0, c0, [], []
        for t in range(steps):
            z = projected[t] + rounded_matmul(h, kernel, bfloat16)
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
                d_h = rounded_matmul(d_z[t], kernel_t, bfloat16)
            d_z = tf.stack(d_z)
            units = recurrent_kernel.shape[0]
            h_before = tf.reshape(tf.concat([h0[None], outputs[:-1]], 0), [-1, units])
            d_kernel = rounded_matmul(h_before, tf.reshape(d_z, [-1, 4 * units]), bfloat16, transpose_a=True)
            return d_z, d_h, d_c, d_kernel

        return (outputs, h, c), grad

    return window(projected, h, c, recurrent_kernel)


def affine(x, kernel, bias, bfloat16):
    """x [..., n] times kernel [n, m] plus bias, as one matmul over all leading positions.

    The bias rides in the matmul as a row under the kernel, against a column of ones, so its
    gradient is the last row of the kernel's; summing the gradient over the positions instead is a
    slow column sum, at the end of the backward pass, where the update waits for it.
    """
    flat = tf.reshape(x, [-1, x.shape[-1]])

    @tf.custom_gradient
    def product(flat, kernel, bias):
        inputs = with_one(flat)

        def grad(d_product):
            d_flat = rounded_matmul(d_product, kernel, bfloat16, transpose_b=True)  # the bias row has no input to reach
            d_weights = rounded_matmul(inputs, d_product, bfloat16, transpose_a=True)
            return d_flat, d_weights[:-1], d_weights[-1]

        return rounded_matmul(inputs, tf.concat([kernel, bias[None]], 0), bfloat16), grad

    return tf.reshape(product(flat, kernel, bias), tf.concat([tf.shape(x)[:-1], [-1]], 0))


def with_one(x):
    """x [n, k] with a column of ones appended: [n, k + 1], to meet a bias row under a kernel."""
    return tf.concat([x, tf.ones_like(x[:, :1])], 1)


def rounded_matmul(a, b, bfloat16, transpose_a=False, transpose_b=False):
    """a times b (either transposed first); bfloat16 rounds both inputs AND the product to
    bfloat16, returned as float32.

    TensorFlow's CPU kernels have no bfloat16 x bfloat16 -> float32 matmul, so the product is
    rounded too (generator.matmul_float32_sums, which runs inside XLA, keeps float32 sums).
    """
    if bfloat16:
        a, b = tf.cast(a, tf.bfloat16), tf.cast(b, tf.bfloat16)
    return tf.cast(tf.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b), tf.float32)


# --- the output layer and the loss ---------------------------------------------------------------

def output_losses(x, kernel, bias, targets, bfloat16):
    """cross_entropy(x @ kernel + bias, targets): the output layer and the loss as one function.

    x [..., units], targets [...]. Its gradient skips passes over the [positions, vocab] logits'
    gradient: each row's upstream gradient goes onto the matmuls' small side (their output, or
    their other input). The bias rides in the matmuls as a row under the kernel (as in affine).
    Under bfloat16 the softmax reads the matmul's bfloat16 product, and its probabilities feed the
    gradient's matmuls as they are.
    """
    shape = tf.shape(targets)
    flat = tf.reshape(x, [-1, x.shape[-1]])
    at_targets = target_indices(targets)
    dtype = tf.bfloat16 if bfloat16 else tf.float32

    @tf.custom_gradient
    def losses_of(flat, kernel, bias):
        inputs = with_one(flat)
        # The vocabulary padded to oneDNN's fast case; the bias row puts the padding's logits at
        # -1e30, probability 0.
        vocab = kernel.shape[1]
        pad = -vocab % tuning.VOCAB_PADDING
        padded_kernel = tf.cast(tf.pad(kernel, [[0, 0], [0, pad]]), dtype)  # cast once, for both directions
        padded_bias = tf.cast(tf.pad(bias, [[0, pad]], constant_values=-1e30), dtype)
        weights = tf.concat([padded_kernel, padded_bias[None]], 0)
        probs, losses = softmax_losses(tf.matmul(tf.cast(inputs, dtype), weights), at_targets)

        def grad(upstream):
            d_logits = minus_one_hot(probs, at_targets)  # times upstream, row by row
            # Against the kernel alone: the bias row's share of d_inputs would be dropped, and the
            # product one column wider.
            d_flat = rounded_matmul(d_logits, padded_kernel, bfloat16, transpose_b=True) * upstream[:, None]
            d_weights = rounded_matmul(inputs * upstream[:, None], d_logits, bfloat16, transpose_a=True)[:, :vocab]
            return d_flat, d_weights[:-1], d_weights[-1]

        return losses, grad

    return tf.reshape(losses_of(flat, kernel, bias), shape)


@tf.custom_gradient
def cross_entropy(logits, targets):
    """-log softmax(logits)[target] per position: tf.nn.sparse_softmax_cross_entropy_with_logits,
    written out because TensorFlow's kernel is slow on CPU.

    The gradient, softmax minus the target's one-hot, reuses the forward pass' probabilities and
    subtracts at the targets only.
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

    TensorFlow's softmax is one pass (oneDNN's kernel), faster than max, exp and sum in Eigen's
    kernels. A target's probability underflows to 0 only when its logit is about 87 below the
    row's top; the losses then come from logsumexp.
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


# --- the optimizer -----------------------------------------------------------------------------------

class Adam(keras.optimizers.Adam):
    """Keras' Adam, with each variable's update one TensorFlow kernel (ResourceApplyAdam).

    Keras writes the update as about a dozen operations, each a pass over the variable. This does
    the same arithmetic (m, v, then var -= lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) +
    epsilon)), on the same slot variables, so checkpoints and results are Keras' own. amsgrad keeps
    Keras' code.
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
