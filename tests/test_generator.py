import numpy as np
import tensorflow as tf

import generator


def test_nucleus_never_emits_a_token_outside_it():
    probs = np.array([[0.5, 0.2, 0.15, 0.1, 0.05]], np.float32)
    logits = tf.constant(np.log(probs))
    # The nucleus of mass 0.6 is {0, 1}: 0.5 alone falls short, 0.5 + 0.2 reaches it.
    filtered = generator.filter_logits(logits, 1.0, 0, 0.6).numpy()[0]
    assert np.isfinite(filtered[:2]).all() and np.isneginf(filtered[2:]).all()
    draws = tf.random.stateless_categorical(tf.constant(filtered[None]), 4000, seed=[1, 2]).numpy()
    assert set(np.unique(draws)) == {0, 1}
    # The top token alone once it holds the mass asked for; everything at top_p = 1.
    assert np.isfinite(generator.filter_logits(logits, 1.0, 0, 0.5).numpy()[0]).sum() == 1
    assert np.isfinite(generator.filter_logits(logits, 1.0, 0, 1.0).numpy()[0]).all()


def test_top_k_keeps_the_k_most_likely():
    logits = tf.constant([[0.1, 2.0, -1.0, 1.5, 0.3]])
    filtered = generator.filter_logits(logits, 1.0, 2, 1.0).numpy()[0]
    assert np.isfinite(filtered).nonzero()[0].tolist() == [1, 3]


def load(run_dir, num_streams=1, banned=""):
    config, vocab, path = generator.load_run(run_dir)
    return generator.Generator(config, vocab, path, num_streams, banned=banned)


def test_same_seed_same_text_and_top_k_one_is_greedy(trained_run):
    gen = load(trained_run[0], num_streams=3)
    first = gen.generate("春", 60, seed=7)
    assert first == gen.generate("春", 60, seed=7)
    assert first != gen.generate("春", 60, seed=8)
    greedy = gen.generate("春", 40, temperature=0)
    assert greedy == gen.generate("春", 40, temperature=1.0, top_k=1, seed=3)
    assert all(text.startswith("春") for text in first + greedy)


def test_banned_and_unknown_characters_never_appear(trained_run):
    gen = load(trained_run[0], num_streams=8, banned="春花")
    texts = gen.generate("", 200, temperature=2.0, seed=1)
    joined = "".join(texts)
    assert len(joined) > 1000
    assert "春" not in joined and "花" not in joined
    assert generator.read_utils.UNKNOWN not in joined


def test_max_lines_stops_each_stream_after_whole_lines(trained_run):
    gen = load(trained_run[0], num_streams=4)
    for text in gen.generate("", 300, max_lines=2, seed=5):
        assert text.count("\n") == 2 and text.endswith("\n")
