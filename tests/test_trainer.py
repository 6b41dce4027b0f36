"""The compiled training call (trainer.make_train_steps) and the precision chosen by the CPU's features."""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

import cpu_training
import trainer
import tuning
from model import build_model, zero_states
from run_dir import ModelConfig

CONFIG = ModelConfig(vocab_size=20, embedding_size=8, lstm_size=16, num_layers=2, dropout=0.1)


def random_ids(batch, length, seed=0):
    return tf.constant(np.random.default_rng(seed).integers(0, 20, (batch, length)).astype(np.int32))


def one_call(x, y):
    """Windows [B, T] as the windows of a one-step training call, [B, 1, T]."""
    return x[:, None], y[:, None]


def test_train_steps_lower_the_loss_and_reset_states_when_the_epoch_starts():
    config = ModelConfig(vocab_size=20, embedding_size=8, lstm_size=16, num_layers=1, dropout=0.0)
    net = build_model(config)
    optimizer = keras.optimizers.Adam(0.05)
    train_steps = trainer.make_train_steps(net, optimizer, 1.0, tf.distribute.get_strategy())
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
        optimizer = cpu_training.Adam(0.01)
        train_steps = trainer.make_train_steps(net, optimizer, 1.0, tf.distribute.get_strategy())
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
        train_steps = trainer.make_train_steps(net, keras.optimizers.SGD(0.1), grad_clip, tf.distribute.get_strategy())
        train_steps(*one_call(random_ids(3, 7, seed=1), random_ids(3, 7, seed=2)), zero_states(CONFIG, 3), tf.constant([True]))
        weights[grad_clip] = [v.numpy() for v in net.trainable_variables]
    for unclipped, far_limit in zip(weights[0.0], weights[1e9]):
        assert np.isfinite(unclipped).all()
        np.testing.assert_allclose(unclipped, far_limit, rtol=1e-6)


def test_bfloat16_is_chosen_only_on_a_cpu_with_amx(tmp_path):
    """Training's --precision auto and the sampler's many-stream matmuls decide by the same CPU flag."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    amx = tuning.cpu_flags(cpuinfo)
    no_amx = frozenset("fpu sse2 avx2 avx512f avx512_bf16".split())
    assert tuning.training_precision(has_gpu=False, flags=amx) == "bfloat16"
    assert tuning.training_precision(has_gpu=True, flags=amx) == "float32"
    assert tuning.training_precision(has_gpu=False, flags=no_amx) == "float32"
    assert tuning.sampling_bfloat16(True, amx) and not tuning.sampling_bfloat16(False, amx)
    assert not tuning.sampling_bfloat16(True, no_amx)
    assert tuning.cpu_flags(tmp_path / "missing") == frozenset()
