import numpy as np
import pytest
import tensorflow as tf

import generator
import model as model_lib
import poem_position
import read_utils
import run_dir
import tuning
from conftest import run_script

NEG_INF = float("-inf")


def row(width, probs_at):
    """[1, width] logits: log-probabilities at the given ids, -inf everywhere else."""
    logits = np.full((1, width), NEG_INF, np.float32)
    for i, p in probs_at.items():
        logits[0, i] = np.log(p)
    return logits


def draws(logits, count, seed=0):
    """count ids sampled from one row of logits, through the generator's sampler."""
    uniform = tf.random.stateless_uniform([count], seed=[seed, 0])
    return generator.sample(tf.constant(np.repeat(logits, count, axis=0)), uniform).numpy()


# --- decoding on fixed distributions --------------------------------------------------------------

def test_nucleus_never_emits_a_token_outside_it():
    # Spread over several sampler blocks, so both levels of the sampler are exercised.
    logits = row(4 * generator.BLOCK, {3: 0.5, 70: 0.2, 71: 0.15, 130: 0.1, 255: 0.05})
    # The nucleus of mass 0.6 is {3, 70}: 0.5 alone falls short, 0.5 + 0.2 reaches it.
    filtered = generator.filter_logits(tf.constant(logits), 1.0, top_p=0.6).numpy()
    assert np.isfinite(filtered[0]).nonzero()[0].tolist() == [3, 70]
    ids = draws(filtered, 20000)
    assert set(np.unique(ids)) == {3, 70}
    assert np.mean(ids == 3) == pytest.approx(0.5 / 0.7, abs=0.02)
    # The top token alone once it holds the mass asked for; all five when the first four fall short.
    assert np.isfinite(generator.filter_logits(tf.constant(logits), 1.0, top_p=0.5).numpy()).sum() == 1
    assert np.isfinite(generator.filter_logits(tf.constant(logits), 1.0, top_p=0.99).numpy()).sum() == 5


def test_top_k_keeps_the_k_most_likely_and_then_the_nucleus_of_those():
    logits = tf.constant([[0.1, 2.0, -1.0, 1.5, 0.3]])
    assert np.isfinite(generator.filter_logits(logits, 1.0, top_k=2).numpy()[0]).nonzero()[0].tolist() == [1, 3]
    # Of the top 3 renormalised (about 0.54, 0.33, 0.13), 0.8 of the mass needs the first two.
    both = generator.filter_logits(logits, 1.0, top_k=3, top_p=0.8).numpy()[0]
    assert np.isfinite(both).nonzero()[0].tolist() == [1, 3]


def test_sampler_follows_the_distribution_and_never_draws_masked_ids():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.5, (1, 3 * generator.BLOCK)).astype(np.float32)
    masked = rng.choice(logits.shape[1], 60, replace=False)
    logits[0, masked] = NEG_INF
    logits[0, generator.BLOCK : 2 * generator.BLOCK] = NEG_INF  # a whole block without mass
    ids = draws(logits, 50000, seed=1)
    assert not np.isin(ids, masked).any() and not ((ids >= generator.BLOCK) & (ids < 2 * generator.BLOCK)).any()
    expected = tf.nn.softmax(logits[0]).numpy()
    observed = np.bincount(ids, minlength=logits.shape[1]) / len(ids)
    assert 0.5 * np.abs(observed - expected).sum() < 0.03  # total variation distance


def test_temperature_sharpens_and_greedy_takes_the_first_highest():
    logits = row(generator.BLOCK, {5: 0.6, 9: 0.4})
    hot = np.mean(draws(logits / 1.0, 5000) == 5)
    cold = np.mean(draws(generator.filter_logits(tf.constant(logits), 0.25).numpy(), 5000) == 5)
    assert hot == pytest.approx(0.6, abs=0.03) and cold == pytest.approx(0.6**4 / (0.6**4 + 0.4**4), abs=0.03)
    tied = row(2 * generator.BLOCK, {7: 0.4, 100: 0.4, 3: 0.2})
    assert generator.greedy(tf.constant(tied)).numpy().tolist() == [7]


def test_stream_uniforms_are_each_seed_groups_own_numbers():
    """One graph call gives each group (seed, count) the columns that seed alone draws, so a
    request sharing a call writes what sample.py writes with its seed."""
    groups = [(5, 3), (2**40, 2), (7, 1), (-5, 2), (2**63 - 1, 1), (0, 1)]
    expected = np.concatenate([tf.random.stateless_uniform([37, count], seed=[seed, 0]).numpy() for seed, count in groups], 1)
    np.testing.assert_array_equal(generator.stream_uniforms(groups, 37).numpy(), expected)
    assert not np.array_equal(expected[:, 5], expected[:, 6])  # different seeds, different numbers


# --- the hand-written step ------------------------------------------------------------------------

# 37 characters: line breaks, the clause marks and ideographs of several rhyme groups, so that
# random text has poems, titles, clauses and rhymes for a model that reads poem positions.
POEM_VOCAB = read_utils.Vocab([read_utils.UNKNOWN, "\n", *"，。？！；", *"东同中风红空冬农宗江窗双支时诗知微归飞鱼书居虞无湖齐西溪佳灰"])


# 1 stream: output_logits' two rows; ahead: the many-stream form, here in float32
@pytest.mark.parametrize("use_embedding, streams, ahead, positions", [
    (True, 2, False, False), (False, 2, False, False), (True, 1, False, False), (True, 2, True, False),
    (True, 2, False, True), (True, 3, True, True),
])
def test_hand_written_step_gives_the_keras_models_logits(use_embedding, streams, ahead, positions):
    vocab = POEM_VOCAB
    assert len(vocab) == 37
    config = run_dir.ModelConfig(vocab_size=37, embedding_size=8, lstm_size=16, num_layers=3,
                                 use_embedding=use_embedding, poem_position=positions)
    net = model_lib.build_model(config)
    for i, v in enumerate(net.trainable_variables):
        v.assign(tf.random.normal(v.shape, stddev=0.5, seed=i))
    # Line breaks and clause marks often enough for empty lines, titles and second clauses.
    ids = np.random.default_rng(0).choice(37, (streams, 60), p=np.r_[[0.0, 0.12], [0.04] * 5, [0.68 / 30] * 30]).astype(np.int32)
    facts = poem_position.CharFacts.of(vocab.chars)
    inputs = np.stack([poem_position.pack(row, facts) for row in ids]) if positions else ids
    expected = net([tf.constant(inputs), *model_lib.zero_states(config, streams)], training=False)[0].numpy()
    step = generator.CharStep.from_model(net, vocab)
    advance = step.ahead if ahead else step
    state, logits = step.zero_state(streams, ahead), []
    position = poem_position.State.start(streams) if positions else None
    for t in range(ids.shape[1]):
        if positions:  # where the input character stands, as pack computes it
            position = position.advance(tf.gather(step.position.kind, ids[:, t]), tf.gather(step.position.group, ids[:, t]))
        out, state = advance(tf.constant(ids[:, t]), state, position=position)
        logits.append(out.numpy())
    logits = np.stack(logits, axis=1)
    assert logits.shape[-1] % generator.BLOCK == 0
    np.testing.assert_allclose(logits[..., :37], expected, rtol=1e-5, atol=1e-5)
    assert np.isneginf(logits[..., 37:]).all()
    if positions:  # the positions reached slots of both kinds of clause, and rhymes
        slots, groups = np.divmod(inputs // poem_position.STRIDE, poem_position.GROUPS)
        assert (slots > poem_position.PLACES).any() and (slots[slots > 0] <= poem_position.PLACES).any()
        assert (groups > 0).any()


# --- generation from a trained run ------------------------------------------------------------------

def load(run_dir, num_streams=1, banned=""):
    config, vocab, path = generator.load_run(run_dir)
    return generator.Generator(config, vocab, path, num_streams, banned=banned)


@pytest.fixture(scope="module")
def gen(trained_run):
    return load(trained_run[0], num_streams=3)


def test_same_seed_same_text_and_top_k_one_is_greedy(gen):
    first = gen.generate("春", 60, seed=7)
    assert first == gen.generate("春", 60, seed=7)
    assert first != gen.generate("春", 60, seed=8)
    assert len(set(first)) > 1  # the streams are independent
    greedy = gen.generate("春", 40, temperature=0)
    assert greedy == gen.generate("春", 40, temperature=1.0, top_k=1, seed=3)
    assert all(text.startswith("春") for text in first + greedy)


@pytest.mark.parametrize("num_streams", [8, tuning.MANY_STREAMS])  # CharStep's two forms
def test_banned_and_unknown_characters_never_appear(trained_run, num_streams):
    banned = load(trained_run[0], num_streams=num_streams, banned="春花")
    texts = banned.generate("", 200, temperature=2.0, seed=1)
    joined = "".join(texts)
    assert len(joined) > 1000
    assert "春" not in joined and "花" not in joined
    assert read_utils.UNKNOWN not in joined


def test_bfloat16_step_stays_close_to_float32(trained_run):
    """The many-stream form rounds matmul inputs to bfloat16: its next-character distributions
    must stay within a small total variation of the few-stream form's, in float32."""
    step = load(trained_run[0]).step

    @tf.function(jit_compile=True)  # the bfloat16 matmul exists only under XLA
    def distributions(ids, many):
        advance = step.ahead if many else step
        state, out = step.zero_state(ids.shape[0], ahead=many), []
        for t in range(ids.shape[1]):
            logits, state = advance(ids[:, t], state, many)
            out.append(tf.nn.softmax(logits))
        return tf.stack(out, 1)

    ids = tf.constant(np.random.default_rng(0).integers(1, 20, (16, 30)).astype(np.int32))
    exact, rounded = distributions(ids, False).numpy(), distributions(ids, True).numpy()
    total_variation = 0.5 * np.abs(exact - rounded).sum(-1)
    assert total_variation.mean() < 0.01 and total_variation.max() < 0.05
    assert total_variation.max() > 0  # bfloat16 really was used


def test_max_lines_stops_each_stream_after_whole_lines(gen):
    for text in gen.generate("", 300, max_lines=2, seed=5):
        assert text.count("\n") == 2 and text.endswith("\n")


def test_max_length_never_cuts_a_line(gen):
    for text in gen.generate("", 40, max_lines=0, seed=5):
        assert 0 < len(text) <= 40 and text.endswith("\n")


def test_unseen_characters_are_a_clear_error(gen):
    with pytest.raises(read_utils.InputError, match="start string has characters the model never saw: 我 你"):
        gen.generate("春我你我", 20)
    with pytest.raises(read_utils.InputError, match="acrostic has characters the model never saw: 夏 冬"):
        gen.generate(acrostic="春夏秋冬")


def test_sample_reports_an_unseen_acrostic_in_one_line(trained_run):
    result = run_script("sample.py", "--checkpoint_dir", trained_run[0], "--acrostic", "春夏", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "never saw: 夏" in result.stderr.strip().splitlines()[-1]
