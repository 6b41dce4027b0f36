import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import model as model_lib
from model import build_model, zero_states
from run_dir import ModelConfig

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
        net = build_model(ModelConfig(vocab_size=20, num_layers=2, use_embedding=use_embedding))
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


def test_layers_are_found_by_name_for_every_input_kind():
    for use_embedding in (True, False):
        found = model_lib.layers_of(build_model(dataclasses.replace(CONFIG, use_embedding=use_embedding)))
        assert (found.embedding is not None, found.one_hot is not None) == (use_embedding, not use_embedding)
        assert [layer.name for layer in found.lstms] == ["lstm_0", "lstm_1"]
        assert [layer.name for layer in found.dropouts] == ["dropout_0", "dropout_1"]
        assert found.logits.units == CONFIG.vocab_size


def test_config_json_round_trip():
    assert ModelConfig.from_json(CONFIG.to_json()) == CONFIG


def test_a_run_from_before_poem_positions_loads_without_them_and_other_fields_stay_required():
    older = {k: v for k, v in CONFIG.to_json().items() if k != "poem_position"}
    assert ModelConfig.from_json(older) == CONFIG and not CONFIG.poem_position
    with pytest.raises(KeyError, match="lstm_size"):
        ModelConfig.from_json({k: v for k, v in older.items() if k != "lstm_size"})
