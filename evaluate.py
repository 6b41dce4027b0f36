"""Loss of a trained run on a text file (nats and bits per character, perplexity), and the poem
metrics of poems sampled from it.

    python evaluate.py --name default --input data/poetry_val.txt
    python evaluate.py --name tang --input tang   # a built-in corpus by name (all of it, training part included)
    python evaluate.py --name default --num_samples 64
    python evaluate.py --name default --num_samples 200 --form wujue --metre off   # poems of a form

The run and the file are checked before TensorFlow starts; its modules are imported where used.
"""

import math
import os

from absl import app, flags

import cli
import corpora
import metre
import metre_plan
import poem_forms
import poem_metrics
import read_utils
import run_dir

flags.DEFINE_string("name", "default", "run name: reads checkpoints/<name>")
flags.DEFINE_string("checkpoint_dir", None, "run directory written by train.py (default: checkpoints/<name>)")
flags.DEFINE_string("input", None, "UTF-8 text file to score, or a built-in corpus: poetry or tang")
flags.DEFINE_integer("seq_length", 256, "characters per evaluation window", lower_bound=1)
flags.DEFINE_integer("num_streams", 16, "parallel streams the file is cut into", lower_bound=1)
flags.DEFINE_integer("num_samples", 0, "sample this many poems and print their poem metrics", lower_bound=0)
flags.DEFINE_float("temperature", 0.8, "sampling temperature of those poems", lower_bound=0)
flags.DEFINE_integer("seed", 0, "random seed of those poems")
flags.DEFINE_enum("form", None, poem_forms.FORM_NAMES, "sample poems of this form (as sample.py --form) instead of "
                  "four free lines as training does")
flags.DEFINE_enum("metre", metre_plan.DEFAULT_METRE, metre_plan.METRES, "with --form: the metre of the poems, as "
                  "sample.py --metre")
flags.DEFINE_integer("best_of", 1, "with --form: keep the likeliest of this many drafts of each poem, as sample.py "
                     "--best_of", lower_bound=1)
flags.register_multi_flags_validator(
    ["input", "num_samples"],
    lambda values: values["input"] is not None or values["num_samples"] > 0,
    "give --input FILE to score, --num_samples N to judge sampled poems, or both",
)
flags.register_multi_flags_validator(
    ["form", "num_samples"],
    lambda values: values["form"] is None or values["num_samples"] > 0,
    "--form chooses the form of sampled poems: give --num_samples N too",
)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    checkpoint_dir = run_dir.path_of(FLAGS.name, FLAGS.checkpoint_dir)
    try:
        for flag in ("metre", "best_of"):
            if FLAGS[flag].present and not FLAGS.form:
                cli.fail(f"--{flag} applies to poems of a form: add --form")
        run = run_dir.read_run(checkpoint_dir)
        text = read_utils.read_text(corpora.resolve(FLAGS.input)) if FLAGS.input else None
        cli.import_tensorflow()
        path = run_dir.latest_checkpoint(checkpoint_dir)
        print(f"checkpoint: {path}")
        if text is not None:
            report_loss(run.config, run.vocab, path, text)
        if FLAGS.num_samples:
            report_poems(run, path)
    except read_utils.InputError as e:
        cli.fail(e)


def report_loss(config, vocab, path, text):
    """The loss on text over every character, and without those outside the vocabulary (unseen in
    training, or too rare to learn: train.py --min_count), which the model gives only the unknown
    token's probability between them."""
    import generator
    import monitor
    import poem_position

    ids = poem_position.model_ids(vocab.encode(text), vocab, config.poem_position)
    windows = read_utils.EvalWindows(ids, FLAGS.num_streams, FLAGS.seq_length)
    evaluator = monitor.Evaluator(config, windows)
    generator.restore_weights(evaluator.model, path)
    losses = evaluator.losses()
    print(f"characters scored: {windows.num_targets:,}, of which outside the vocabulary: "
          f"{windows.num_unknown_targets:,} ({losses.unknown_share:.2%})")
    print(f"loss: {losses.all:.4f} nats/char")
    print(f"bits per character: {losses.all / math.log(2):.4f}")
    print(f"perplexity: {math.exp(losses.all):.2f}")
    print(f"loss on the characters in the vocabulary alone: {losses.known:.4f} nats/char")


def report_poems(run, path):
    """The poem metrics of --num_samples poems: of --form, or sampled as training samples them for TensorBoard."""
    poems, scores, described = sample_poems(run, path)
    scorer = poem_scorer(run.record, poems)
    print(f"poems sampled: {len(poems)} {described}, temperature {FLAGS.temperature:g}, seed {FLAGS.seed}")
    if scores is not None:
        print(f"mean log-probability per sampled character (the model's own, nats): {sum(scores) / len(scores):.4f}")
    labels = {
        "well_formed": f"well-formed lines ({scorer.clause_length}-character couplets)",
        "copy_rate": "clauses copied from the training text",
        "distinct_bigrams": "distinct character bigrams",
        "rhyme": "of these, rhyming (even clauses in one 平水韵 level group)",
        "tonal_pattern": "of these, following a standard tonal pattern",
    }
    scores = scorer.score(poems)
    for name, value in scores.items():
        if name == "rhyme":
            metrical = sum(metre.clauses_of(poem) is not None for poem in poems)
            print(f"poems that are 绝句 or 律诗: {metrical} of {len(poems)}")
        print(f"{labels[name]}: {value:.1%}")
    if "rhyme" in scores:
        real = ", ".join(f"{name} {rhyme:.1%}/{pattern:.1%}" for name, (rhyme, pattern) in poem_metrics.REAL_METRE.items())
        print(f"real poems, rhyming/following a pattern: {real}")


def poem_scorer(record, poems):
    """The PoemScorer of poems sampled from a run: well-formed judged in --form's clause length, else
    in the corpus' dominant one, or the poems' own if the training text is unavailable."""
    train_text, missing = training_text(record)
    clause_length = poem_forms.find_form(FLAGS.form).clause_length if FLAGS.form else None
    if train_text is None:
        print(f"copy rate skipped: {missing}; well-formed is judged in the form most samples take")
        lines = poem_metrics.lines_of(poems)
        return poem_metrics.PoemScorer(clause_length or poem_metrics.dominant_clause_length(lines, min_share=0))
    if clause_length:
        return poem_metrics.PoemScorer(clause_length, set(poem_metrics.clauses(train_text)))
    return poem_metrics.PoemScorer.from_training_text(train_text)


def sample_poems(run, path):
    """(poems, their scores or None, a description): --num_samples poems of --form under --metre,
    each the best of --best_of drafts, or without --form as training samples them for TensorBoard."""
    records = run_dir.trained_on_records(run.record)
    if not FLAGS.form:
        import monitor

        sampler = monitor.PoemSampler(run.config, run.vocab, FLAGS.num_samples, FLAGS.temperature, FLAGS.seed,
                                      records=records)
        return sampler.sample(path), None, "whole poems" if records else f"of {sampler.LINES} lines"
    import generator

    gen = generator.Generator(run.config, run.vocab, path, FLAGS.num_samples, records=records)
    drafts = gen.generate(form=FLAGS.form, metre=FLAGS.metre, best_of=FLAGS.best_of, temperature=FLAGS.temperature,
                          seed=FLAGS.seed, scored=True)
    described = f"{poem_forms.find_form(FLAGS.form).name}, --metre {FLAGS.metre}, best of {FLAGS.best_of}"
    return [draft.text for draft in drafts], [draft.score for draft in drafts], described


def training_text(record):
    """(the training part of the run's corpus, None), or (None, why it is unavailable); record is
    the run's config.json."""
    corpus = record["corpus"]
    path, sha256 = corpus["path"], corpus["sha256"]
    if corpus.get("name") and not os.path.isfile(path):  # a built-in corpus: prepared again where it is missing
        try:
            path = corpora.resolve(corpus["name"])
        except read_utils.InputError as e:
            return None, str(e)
    if not os.path.isfile(path):
        return None, f"the training corpus {path} is missing"
    if read_utils.sha256_of(path) != sha256:
        return None, f"the training corpus {path} has changed since training"
    split = corpus.get("split", read_utils.LINES)
    train_text, _ = read_utils.split_text(read_utils.read_text(path), record["training"]["val_fraction"], split)
    return train_text, None


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
