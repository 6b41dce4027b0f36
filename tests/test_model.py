import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import model as model_lib
from model import ModelConfig, build_model

CONFIG = ModelConfig(vocab_size=20, embedding_size=8, lstm_size=16, num_layers=2, dropout=0.1)


def test_logits_cover_the_vocabulary():
    net = build_model(CONFIG, batch_size=3)
    assert net(np.zeros((3, 5), np.int32)).shape == (3, 5, 20)


def test_state_carries_across_windows():
    """Two windows with the state carried give the same logits as one call on both."""
    ids = np.random.default_rng(0).integers(0, 20, (2, 12)).astype(np.int32)
    net = build_model(CONFIG, batch_size=2)
    whole = net(ids, training=False).numpy()
    model_lib.reset_states(net)
    first = net(ids[:, :5], training=False).numpy()
    second = net(ids[:, 5:], training=False).numpy()
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, rtol=1e-4, atol=1e-5)
    model_lib.reset_states(net)
    np.testing.assert_allclose(net(ids[:, :5], training=False).numpy(), first, rtol=1e-5)


def test_weights_load_into_a_model_of_another_batch_size(tmp_path):
    trained = build_model(CONFIG, batch_size=8)
    for v in trained.trainable_variables:
        v.assign(tf.random.normal(v.shape, seed=1))
    path = model_lib.weights_checkpoint(trained).write(str(tmp_path / "ckpt"))
    sampler = build_model(CONFIG, batch_size=1)
    model_lib.weights_checkpoint(sampler).read(path).assert_existing_objects_matched()
    for a, b in zip(trained.weights, sampler.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    ids = np.arange(6, dtype=np.int32)[None]
    model_lib.reset_states(trained)
    batch = np.repeat(ids, 8, axis=0)
    np.testing.assert_allclose(sampler(ids).numpy()[0], trained(batch).numpy()[0], rtol=1e-4, atol=1e-5)


def test_lstm_layers_stay_cudnn_eligible():
    """Keras takes the cuDNN kernel only for these settings; a change here silently slows GPUs."""
    for use_embedding in (True, False):
        net = build_model(ModelConfig(vocab_size=20, use_embedding=use_embedding), batch_size=2)
        lstms = [layer for layer in net.layers if isinstance(layer, layers.LSTM)]
        assert len(lstms) == 2
        for lstm in lstms:
            assert lstm.activation.__name__ == "tanh"
            assert lstm.recurrent_activation.__name__ == "sigmoid"
            assert lstm.recurrent_dropout == 0 and not lstm.unroll and lstm.use_bias
            assert lstm.stateful and lstm.return_sequences


def test_one_hot_input_matches_vocabulary():
    net = build_model(ModelConfig(vocab_size=20, use_embedding=False, lstm_size=8), batch_size=1)
    assert net.get_layer("one_hot")(np.array([[3]], np.int32)).numpy()[0, 0].argmax() == 3
    assert not any(layer.name == "embedding" for layer in net.layers)


def test_output_bias_starts_at_log_frequencies():
    net = build_model(CONFIG, batch_size=1)
    ids = np.array([1] * 90 + [2] * 10, np.uint16)
    model_lib.init_output_bias(net, ids)
    probs = tf.nn.softmax(net.get_layer("logits").bias).numpy()
    assert probs[1] == pytest.approx(0.9 * probs.sum(), rel=0.15)
    assert probs[1] > probs[2] > probs[3]


def test_config_json_round_trip():
    assert ModelConfig.from_json(CONFIG.to_json()) == CONFIG
