"""The hand-written CPU training path against the Keras model it must equal (cpu_training.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import cpu_training
import model as model_lib
import poem_position
import trainer
from model import build_model, zero_states
from run_dir import ModelConfig

CONFIG = ModelConfig(vocab_size=20, embedding_size=8, lstm_size=16, num_layers=2, dropout=0.1)


def random_ids(batch, length, seed=0):
    return tf.constant(np.random.default_rng(seed).integers(0, 20, (batch, length)).astype(np.int32))


def test_adam_updates_like_keras_adam():
    """cpu_training.Adam's one-kernel update gives Keras' weights and slots, for dense and IndexedSlices gradients."""
    results = []
    for optimizer_class in (keras.optimizers.Adam, cpu_training.Adam):
        dense, table = tf.Variable(tf.ones([4, 3])), tf.Variable(tf.ones([5, 3]))
        schedule = keras.optimizers.schedules.CosineDecay(0.01, decay_steps=10, warmup_target=0.05, warmup_steps=2)
        optimizer = optimizer_class(learning_rate=schedule)
        for k in range(4):
            rows = tf.constant([k % 5, 4])  # as an embedding's gradient: some rows only
            gradients = [
                tf.random.stateless_normal([4, 3], seed=[k, 0]),
                tf.IndexedSlices(tf.random.stateless_normal([2, 3], seed=[k, 1]), rows, tf.constant([5, 3])),
            ]
            optimizer.apply_gradients(zip(gradients, [dense, table]))
        results.append([dense.numpy(), table.numpy(), *(v.numpy() for v in optimizer.variables)])
    assert len(results[0]) == len(results[1]) == 7  # the weights, iterations, learning rate, and m, v of each
    for keras_value, ours in zip(*results):
        np.testing.assert_allclose(ours, keras_value, rtol=1e-5, atol=1e-6)


def keras_forward(net, ids, states, training):
    return net([ids, *states], training=training)


def by_hand_forward(net, ids, states, training):
    """The logits of the hand-written model: lstm_stack, then the output layer as an affine product."""
    x, states = cpu_training.lstm_stack(net, ids, states, training)
    output = model_lib.layers_of(net).logits
    x = tf.transpose(x, [1, 0, 2])  # to batch-major
    return [cpu_training.affine(x, output.kernel.value, output.bias.value, model_lib.is_bfloat16(net)), *states]


@pytest.mark.parametrize("use_embedding, steps, positions", [(True, 7, False), (False, 7, False), (True, 1, False),
                                                             (True, 7, True)])
def test_cpu_path_computes_the_keras_model_and_its_gradients(use_embedding, steps, positions):
    """The CPU training path (lstm_stack) must be the Keras model: same logits, states and gradients,
    whether the window splits into pieces (tuning.PIPELINE_PIECES) or is a single step, and with
    poem positions packed into the ids (poem_position.pack) for a model that reads them."""
    config = ModelConfig(vocab_size=20, embedding_size=8, lstm_size=16, num_layers=2, dropout=0.5,
                         use_embedding=use_embedding, poem_position=positions)
    net = build_model(config)
    for v in net.trainable_variables:
        v.assign(tf.random.normal(v.shape, stddev=0.5, seed=2))
    ids, targets = random_ids(3, steps, seed=1), random_ids(3, steps, seed=2)
    if positions:
        packed = np.random.default_rng(4).integers(0, poem_position.SLOTS * poem_position.GROUPS, ids.shape)
        ids = ids + tf.constant(poem_position.STRIDE * packed, ids.dtype)
    states = [tf.random.normal(s.shape, seed=3 + i) for i, s in enumerate(zero_states(config, 3))]
    seeds = [layer.seed_generator.state for layer in net.layers if isinstance(layer, model_lib.ReplicaDropout)]
    first_seeds = [seed.numpy() for seed in seeds]
    results = []
    for forward in (keras_forward, by_hand_forward):
        for seed, value in zip(seeds, first_seeds):
            seed.assign(value)  # both paths draw the same dropout masks
        with tf.GradientTape() as tape:
            tape.watch(states)
            logits, *new_states = forward(net, ids, states, training=True)
            # Weigh the final states too, so their gradients (the cross-window path) are checked.
            loss = tf.reduce_sum(cpu_training.cross_entropy(logits, targets)) + sum(
                tf.reduce_sum(s * (k + 1)) for k, s in enumerate(new_states)
            )
        grads = tape.gradient(loss, [*net.trainable_variables, *states])
        results.append([logits, *new_states, *map(tf.convert_to_tensor, grads)])  # the embedding's: IndexedSlices
    for keras_value, by_hand_value in zip(*results):
        np.testing.assert_allclose(by_hand_value, keras_value, rtol=1e-4, atol=1e-5)
    without_dropout = net([ids, *states], training=False)[0]
    assert np.abs(results[1][0] - without_dropout).max() > 0.01  # the masks were drawn and applied


def test_cpu_path_in_bfloat16_stays_close_to_float32():
    net32, net16 = build_model(CONFIG), build_model(CONFIG, "bfloat16")
    for a, b in zip(net32.weights, net16.weights):
        b.assign(a)
    ids, states = random_ids(3, 7), zero_states(CONFIG, 3)
    logits32, *_ = by_hand_forward(net32, ids, states, training=False)
    logits16, *states16 = by_hand_forward(net16, ids, states, training=False)
    assert logits16.dtype == tf.float32 and all(s.dtype == tf.float32 for s in states16)
    difference = np.abs(logits16.numpy() - logits32.numpy())
    assert 0 < difference.max() < 0.05  # bfloat16 rounding, and no more


def test_cross_entropy_matches_tensorflow_in_value_and_gradient():
    logits = tf.random.normal([2, 5, 30], stddev=4.0, seed=4)
    targets = random_ids(2, 5)
    weights = tf.random.uniform([2, 5], seed=5)
    results = []
    for loss_fn in (lambda l, t: tf.nn.sparse_softmax_cross_entropy_with_logits(t, l), cpu_training.cross_entropy):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            losses = loss_fn(logits, targets)
            total = tf.reduce_sum(losses * weights)
        results.append((losses, tape.gradient(total, logits)))
    for ours, theirs in zip(results[1], results[0]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_losses_stay_exact_when_a_targets_probability_underflows():
    """A target 200 nats below its row's top has probability 0 in float32, and still its exact loss."""
    logits = tf.constant([[[0.0, -200.0, 1.0], [2.0, 0.5, -1.0]]])
    targets = tf.constant([[1, 0]])
    expected = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
    np.testing.assert_allclose(cpu_training.cross_entropy(logits, targets), expected, rtol=1e-6)
    for bfloat16 in (False, True):
        # The identity kernel makes x the logits; the bias rides in the matmul as an extra row.
        losses = cpu_training.output_losses(logits, tf.eye(3), tf.zeros([3]), targets, bfloat16)
        np.testing.assert_allclose(losses, expected, rtol=0.01 if bfloat16 else 1e-6)


def test_output_losses_match_the_dense_layer_and_tensorflows_loss():
    """output_losses(x, kernel, bias, y) = cross-entropy of x @ kernel + bias, in value and in every gradient."""
    x = tf.random.stateless_normal([2, 5, 16], seed=[1, 0])
    kernel = tf.random.stateless_normal([16, 30], seed=[2, 0], stddev=0.5)
    bias = tf.random.stateless_normal([30], seed=[3, 0])
    targets = random_ids(2, 5)
    weights = tf.random.stateless_uniform([2, 5], seed=[4, 0])  # a different upstream gradient per position

    def reference(x, kernel, bias):
        return tf.nn.sparse_softmax_cross_entropy_with_logits(targets, tf.einsum("btu,uv->btv", x, kernel) + bias)

    results = {}
    for name, loss_fn in [("reference", reference),
                          ("float32", lambda *a: cpu_training.output_losses(*a, targets, bfloat16=False)),
                          ("bfloat16", lambda *a: cpu_training.output_losses(*a, targets, bfloat16=True))]:
        with tf.GradientTape() as tape:
            tape.watch([x, kernel, bias])
            losses = loss_fn(x, kernel, bias)
            total = tf.reduce_sum(losses * weights)
        results[name] = [losses, *tape.gradient(total, [x, kernel, bias])]
    for ours, theirs in zip(results["float32"], results["reference"]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(results["bfloat16"], results["reference"]):
        np.testing.assert_allclose(ours, theirs, rtol=0.05, atol=0.02)  # bfloat16 rounding, and no more


def test_train_steps_give_the_same_losses_by_hand_or_through_keras():
    config = ModelConfig(vocab_size=20, embedding_size=8, lstm_size=16, num_layers=2, dropout=0.0)
    losses = {}
    for path in (True, False):
        keras.utils.set_random_seed(7)
        net = build_model(config)
        train_steps = trainer.make_train_steps(net, keras.optimizers.Adam(0.01), 1.0, tf.distribute.get_strategy(), by_hand=path)
        ids, states = random_ids(4, 13), zero_states(config, 4)
        x, y = (tf.tile(part[:, None], [1, 5, 1]) for part in (ids[:, :-1], ids[:, 1:]))  # five steps on one window
        losses[path] = train_steps(x, y, states, tf.zeros([5], tf.bool))[0].numpy()
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)
    assert losses[True][-1] < losses[True][0]
