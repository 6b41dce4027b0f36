import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import model as model_lib
from model import ModelConfig, build_model, zero_states

CONFIG = ModelConfig(vocab_size=20, embedding_size=8, lstm_size=16, num_layers=2, dropout=0.1)


def random_ids(batch, length, seed=0):
    return tf.constant(np.random.default_rng(seed).integers(0, 20, (batch, length)).astype(np.int32))


def test_logits_cover_the_vocabulary_and_states_come_back():
    logits, *states = build_model(CONFIG)([random_ids(3, 5), *zero_states(CONFIG, 3)])
    assert logits.shape == (3, 5, 20)
    assert [s.shape for s in states] == [(3, 16)] * 4


def test_state_carries_across_windows():
    """Two windows with the state carried give the same logits as one call on both."""
    ids = random_ids(2, 12)
    net = build_model(CONFIG)
    zeros = zero_states(CONFIG, 2)
    whole, *_ = net([ids, *zeros], training=False)
    first, *states = net([ids[:, :5], *zeros], training=False)
    second, *_ = net([ids[:, 5:], *states], training=False)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, rtol=1e-4, atol=1e-5)
    # Without the carried state the second window is read from scratch, and differs.
    fresh, *_ = net([ids[:, 5:], *zeros], training=False)
    assert np.abs(fresh.numpy() - second.numpy()).max() > 1e-4


def test_weights_load_into_a_model_serving_any_batch_size(tmp_path):
    trained = build_model(CONFIG)
    for v in trained.trainable_variables:
        v.assign(tf.random.normal(v.shape, seed=1))
    path = model_lib.weights_checkpoint(trained).write(str(tmp_path / "ckpt"))
    sampler = build_model(CONFIG)
    model_lib.weights_checkpoint(sampler).read(path).assert_existing_objects_matched()
    for a, b in zip(trained.weights, sampler.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    ids = tf.range(6)[None]
    one, *_ = sampler([ids, *zero_states(CONFIG, 1)])
    eight, *_ = trained([tf.repeat(ids, 8, axis=0), *zero_states(CONFIG, 8)])
    np.testing.assert_allclose(one[0], eight[0], rtol=1e-4, atol=1e-5)


def test_bfloat16_computes_in_bfloat16_and_returns_float32():
    net = build_model(CONFIG, "bfloat16")
    logits, *states = net([random_ids(2, 4), *zero_states(CONFIG, 2)])
    assert logits.dtype == tf.float32 and all(s.dtype == tf.float32 for s in states)
    assert all(v.dtype == "float32" for v in net.weights)
    assert net.get_layer("lstm_0").compute_dtype == "bfloat16"


def test_lstm_layers_stay_cudnn_eligible():
    """Keras takes the cuDNN kernel only for these settings; a change here silently slows GPUs."""
    for use_embedding in (True, False):
        net = build_model(ModelConfig(vocab_size=20, use_embedding=use_embedding))
        lstms = [layer for layer in net.layers if isinstance(layer, layers.LSTM)]
        assert len(lstms) == 2
        for lstm in lstms:
            assert lstm.activation.__name__ == "tanh"
            assert lstm.recurrent_activation.__name__ == "sigmoid"
            assert lstm.recurrent_dropout == 0 and not lstm.unroll and lstm.use_bias
            assert lstm.return_sequences and lstm.return_state


def test_one_hot_input_matches_vocabulary():
    net = build_model(ModelConfig(vocab_size=20, use_embedding=False, lstm_size=8))
    assert net.get_layer("one_hot")(np.array([[3]], np.int32)).numpy()[0, 0].argmax() == 3
    assert not any(layer.name == "embedding" for layer in net.layers)


def test_output_bias_starts_at_log_frequencies():
    net = build_model(CONFIG)
    counts = np.bincount(np.array([1] * 90 + [2] * 10), minlength=20)
    model_lib.init_output_bias(net, counts)
    probs = tf.nn.softmax(net.get_layer("logits").bias).numpy()
    assert probs[1] == pytest.approx(0.9 * probs.sum(), rel=0.15)
    assert probs[1] > probs[2] > probs[3]


def one_call(x, y):
    """Windows [B, T] as the windows of a one-step training call, [B, 1, T]."""
    return x[:, None], y[:, None]


def test_train_steps_lower_the_loss_and_reset_states_when_the_epoch_starts():
    config = ModelConfig(vocab_size=20, embedding_size=8, lstm_size=16, num_layers=1, dropout=0.0)
    net = build_model(config)
    optimizer = keras.optimizers.Adam(0.05)
    train_steps = model_lib.make_train_steps(net, optimizer, 1.0, tf.distribute.get_strategy())
    ids = tf.constant(np.tile(np.arange(20, dtype=np.int32), (4, 2)))  # an easy rule: next id is +1
    x, y = one_call(ids[:, :-1], ids[:, 1:])
    states = zero_states(config, 4)
    first, norm, states = train_steps(x, y, states, tf.constant([True]))
    assert all(np.abs(s.numpy()).max() > 0 for s in states) and float(norm[0]) > 0
    for _ in range(30):
        losses, _, states = train_steps(x, y, states, tf.constant([True]))
    assert float(losses[0]) < 0.5 * float(first[0])
    assert int(optimizer.iterations.numpy()) == 31


def test_one_call_of_several_steps_trains_like_one_call_a_step():
    """The loop inside a call gives every step's loss, gradient norm, weights, optimizer slots,
    dropout masks and carried states exactly as separate calls do, an epoch start mid-call included."""
    steps = 4
    starts_epoch = tf.constant([False, False, True, False])
    window = tf.constant(np.random.default_rng(3).integers(0, 20, (3, steps, 8)).astype(np.int32))
    x, y = window[..., :-1], window[..., 1:]
    results = {}
    for calls in ("one", "each"):
        keras.utils.set_random_seed(5)
        net = build_model(CONFIG)
        optimizer = model_lib.Adam(0.01)
        train_steps = model_lib.make_train_steps(net, optimizer, 1.0, tf.distribute.get_strategy())
        states = [s + 0.5 for s in zero_states(CONFIG, 3)]  # carried states, to be dropped at the epoch start
        if calls == "one":
            losses, norms, states = train_steps(x, y, states, starts_epoch)
        else:
            outputs = []
            for i in range(steps):
                loss, norm, states = train_steps(x[:, i : i + 1], y[:, i : i + 1], states, starts_epoch[i : i + 1])
                outputs.append((loss, norm))
            losses, norms = (tf.concat(parts, 0) for parts in zip(*outputs))
        results[calls] = [losses, norms, *states, *net.weights, *optimizer.variables]
    assert results["one"][0].shape == [steps]
    for one, each in zip(results["one"], results["each"]):
        np.testing.assert_allclose(one, each, rtol=1e-6, atol=1e-7)


def test_grad_clip_zero_means_no_clipping():
    weights = {}
    for grad_clip in (0.0, 1e9):
        net = build_model(dataclasses.replace(CONFIG, dropout=0.0))
        for i, v in enumerate(net.trainable_variables):
            v.assign(tf.random.stateless_normal(v.shape, seed=[i, 0], stddev=0.5))
        train_steps = model_lib.make_train_steps(net, keras.optimizers.SGD(0.1), grad_clip, tf.distribute.get_strategy())
        train_steps(*one_call(random_ids(3, 7, seed=1), random_ids(3, 7, seed=2)), zero_states(CONFIG, 3), tf.constant([True]))
        weights[grad_clip] = [v.numpy() for v in net.trainable_variables]
    for unclipped, far_limit in zip(weights[0.0], weights[1e9]):
        assert np.isfinite(unclipped).all()
        np.testing.assert_allclose(unclipped, far_limit, rtol=1e-6)


def test_fused_adam_updates_like_keras_adam():
    """model.Adam's one-kernel update gives Keras' weights and slots, for dense and IndexedSlices gradients."""
    results = []
    for optimizer_class in (keras.optimizers.Adam, model_lib.Adam):
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


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="with a GPU, auto is always float32")
def test_auto_precision_is_bfloat16_only_on_a_cpu_with_amx(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu sse2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert model_lib.auto_precision(cpuinfo) == "bfloat16"
    cpuinfo.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert model_lib.auto_precision(cpuinfo) == "float32"
    assert model_lib.auto_precision(tmp_path / "missing") == "float32"


def test_config_json_round_trip():
    assert ModelConfig.from_json(CONFIG.to_json()) == CONFIG


def keras_forward(net, ids, states, training):
    return net([ids, *states], training=training)


def fused_forward(net, ids, states, training):
    """The logits of the training step's hand-written model: fused_hidden, then the output layer."""
    x, states = model_lib.fused_hidden(net, ids, states, training)
    output = net.get_layer("logits")
    x = tf.transpose(x, [1, 0, 2])  # to batch-major
    return [model_lib.dense(x, output.kernel.value, output.bias.value, model_lib.is_bfloat16(net)), *states]


@pytest.mark.parametrize("use_embedding, steps", [(True, 7), (False, 7), (True, 1)])
def test_fused_lstm_computes_the_keras_model_and_its_gradients(use_embedding, steps):
    """The CPU training path (fused_hidden) must be the Keras model: same logits, states and gradients,
    whether the window splits into pieces (PIPELINE_PIECES) or is a single step."""
    config = ModelConfig(vocab_size=20, embedding_size=8, lstm_size=16, num_layers=2, dropout=0.5, use_embedding=use_embedding)
    net = build_model(config)
    for v in net.trainable_variables:
        v.assign(tf.random.normal(v.shape, stddev=0.5, seed=2))
    ids, targets = random_ids(3, steps, seed=1), random_ids(3, steps, seed=2)
    states = [tf.random.normal(s.shape, seed=3 + i) for i, s in enumerate(zero_states(config, 3))]
    seeds = [layer.seed_generator.state for layer in net.layers if isinstance(layer, model_lib.ReplicaDropout)]
    first_seeds = [seed.numpy() for seed in seeds]
    results = []
    for forward in (keras_forward, fused_forward):
        for seed, value in zip(seeds, first_seeds):
            seed.assign(value)  # both paths draw the same dropout masks
        with tf.GradientTape() as tape:
            tape.watch(states)
            logits, *new_states = forward(net, ids, states, training=True)
            # Weigh the final states too, so their gradients (the cross-window path) are checked.
            loss = tf.reduce_sum(model_lib.cross_entropy(logits, targets)) + sum(
                tf.reduce_sum(s * (k + 1)) for k, s in enumerate(new_states)
            )
        grads = tape.gradient(loss, [*net.trainable_variables, *states])
        results.append([logits, *new_states, *map(tf.convert_to_tensor, grads)])  # the embedding's: IndexedSlices
    for keras_value, fused_value in zip(*results):
        np.testing.assert_allclose(fused_value, keras_value, rtol=1e-4, atol=1e-5)
    without_dropout = net([ids, *states], training=False)[0]
    assert np.abs(results[1][0] - without_dropout).max() > 0.01  # the masks were drawn and applied


def test_fused_lstm_in_bfloat16_stays_close_to_float32():
    net32, net16 = build_model(CONFIG), build_model(CONFIG, "bfloat16")
    for a, b in zip(net32.weights, net16.weights):
        b.assign(a)
    ids, states = random_ids(3, 7), zero_states(CONFIG, 3)
    logits32, *_ = fused_forward(net32, ids, states, training=False)
    logits16, *states16 = fused_forward(net16, ids, states, training=False)
    assert logits16.dtype == tf.float32 and all(s.dtype == tf.float32 for s in states16)
    difference = np.abs(logits16.numpy() - logits32.numpy())
    assert 0 < difference.max() < 0.05  # bfloat16 rounding, and no more


def test_cross_entropy_matches_tensorflow_in_value_and_gradient():
    logits = tf.random.normal([2, 5, 30], stddev=4.0, seed=4)
    targets = random_ids(2, 5)
    weights = tf.random.uniform([2, 5], seed=5)
    results = []
    for loss_fn in (lambda l, t: tf.nn.sparse_softmax_cross_entropy_with_logits(t, l), model_lib.cross_entropy):
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
    np.testing.assert_allclose(model_lib.cross_entropy(logits, targets), expected, rtol=1e-6)
    for bfloat16 in (False, True):
        # The identity kernel makes x the logits; the bias rides in the matmul as an extra row.
        losses = model_lib.output_losses(logits, tf.eye(3), tf.zeros([3]), targets, bfloat16)
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
                          ("float32", lambda *a: model_lib.output_losses(*a, targets, bfloat16=False)),
                          ("bfloat16", lambda *a: model_lib.output_losses(*a, targets, bfloat16=True))]:
        with tf.GradientTape() as tape:
            tape.watch([x, kernel, bias])
            losses = loss_fn(x, kernel, bias)
            total = tf.reduce_sum(losses * weights)
        results[name] = [losses, *tape.gradient(total, [x, kernel, bias])]
    for ours, theirs in zip(results["float32"], results["reference"]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(results["bfloat16"], results["reference"]):
        np.testing.assert_allclose(ours, theirs, rtol=0.05, atol=0.02)  # bfloat16 rounding, and no more


def test_train_steps_give_the_same_losses_fused_or_keras():
    config = ModelConfig(vocab_size=20, embedding_size=8, lstm_size=16, num_layers=2, dropout=0.0)
    losses = {}
    for path in (True, False):
        keras.utils.set_random_seed(7)
        net = build_model(config)
        train_steps = model_lib.make_train_steps(net, keras.optimizers.Adam(0.01), 1.0, tf.distribute.get_strategy(), fused=path)
        ids, states = random_ids(4, 13), zero_states(config, 4)
        x, y = (tf.tile(part[:, None], [1, 5, 1]) for part in (ids[:, :-1], ids[:, 1:]))  # five steps on one window
        losses[path] = train_steps(x, y, states, tf.zeros([5], tf.bool))[0].numpy()
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)
    assert losses[True][-1] < losses[True][0]
