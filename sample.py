"""Generates text (Tang poems by default) from a trained run.

    python sample.py --start_string 春
    python sample.py --name poetry --num_samples 4 --temperature 0.8 --top_p 0.9
    python sample.py --form qijue                 # a 七言绝句: two lines of two seven-character clauses
    python sample.py --acrostic 春夏秋冬           # clause k begins with the k-th character (五言绝句)
    python sample.py --form wulv --acrostic 春夏秋冬 --start_string 春风
    python sample.py --name tang --title 春晓        # a run trained with --input tang: a poem of that title
    python sample.py --form qijue --rhyme 东       # rhyming in the 平水韵's 东 group, in a standard tonal pattern
    python sample.py --form wujue --metre off --best_of 8 --show_scores  # the likeliest of 8 drafts, with its score

All samples are generated together, in one compiled loop over --num_samples (times --best_of) streams.

Every model setting comes from the run's config.json; no model flag is repeated here, nor the
corpus: a run trained on a corpus of records (--input tang: poems separated by empty lines) writes
whole poems, title line first, each ending with its poem. The run is checked before TensorFlow starts.
"""

from absl import app, flags

import cli
import metre_plan
import poem_forms
import read_utils
import run_dir

flags.DEFINE_string("name", "default", "run name: reads checkpoints/<name>")
flags.DEFINE_string("checkpoint_dir", None, "run directory written by train.py (default: checkpoints/<name>)")
flags.DEFINE_string("start_string", "", "text that primes the model and begins every sample")
flags.DEFINE_integer("max_length", 300, "most characters per sample, cut back to whole lines (no effect on --form)",
                     lower_bound=1)
flags.DEFINE_integer("max_lines", None, "stop a sample after this many lines (0: only --max_length; no effect on "
                     "--form, nor on a run trained on poems separated by empty lines, whose samples end with their "
                     "poem); default: 4 on a poem corpus, 0 on other text", lower_bound=0)
flags.DEFINE_enum("form", None, poem_forms.FORM_NAMES,
                  "write one poem of this fixed form per sample, always well-formed: 五言绝句 (wujue), 五言律诗 "
                  "(wulv), 七言绝句 (qijue) or 七言律诗 (qilv), one couplet XXXXX，XXXXX。 per line")
flags.DEFINE_string("acrostic", "", "acrostic poem (藏头诗): clause k begins with the k-th character; without "
                    "--form, a 五言绝句 for up to 4 characters, a 五言律诗 for up to 8")
flags.DEFINE_string("title", "", "the poem's title, written as its first line, then the poem (free, --form or "
                    "--acrostic); only for a run trained on titled poems (--input tang). Empty: the model writes one")
flags.DEFINE_enum("metre", metre_plan.DEFAULT_METRE, metre_plan.METRES,
                  "the metre of poems (--form, --acrostic): rhyme: the even clauses rhyme in one level group of "
                  "the 平水韵; strict: that and a standard tonal pattern (平仄); off: the form alone")
flags.DEFINE_string("rhyme", "", "under --metre rhyme or strict: rhyme in the level group of this character "
                    "(e.g. 东; one of its groups if it has several); default: each poem draws a group, as often as "
                    "the Tang poems rhyme in it")
flags.DEFINE_integer("num_samples", 1, "samples generated together in one batch", lower_bound=1)
flags.DEFINE_integer("best_of", 1, "write this many drafts of each sample in the same batch and keep the one "
                     "the model finds likeliest (highest mean log-probability per sampled character)", lower_bound=1)
flags.DEFINE_boolean("show_scores", False, "print each sample's score, the mean log-probability (nats) the model "
                     "gives the characters it sampled, after it")
flags.DEFINE_float("temperature", 0.8, "sampling temperature; 0 is greedy", lower_bound=0)
flags.DEFINE_integer("top_k", 0, "sample only from the k most likely characters (0: all)", lower_bound=0)
flags.DEFINE_float("top_p", 1.0, "nucleus sampling: the smallest set of characters with this much probability")
flags.DEFINE_string("ban", "", "characters never to sample (--start_string, --acrostic and --form may not need them)")
flags.DEFINE_integer("seed", 0, "random seed: the same seed gives the same text")
flags.register_validator("top_p", lambda v: 0 < v <= 1, "--top_p must be in (0, 1]")
# The original project's names. Its model flags are accepted and ignored: config.json has them.
flags.DEFINE_alias("checkpoint_path", "checkpoint_dir")
flags.DEFINE_string("converter_path", None, "original flag, ignored: the vocabulary is vocab.json in the run")
for _name in ("lstm_size", "num_layers", "embedding_size"):
    flags.DEFINE_integer(_name, None, "original flag, ignored: the run's config.json has it")
flags.DEFINE_boolean("use_embedding", None, "original flag, ignored: the run's config.json has it")
FLAGS = flags.FLAGS


POEM_LINES = 4  # --max_lines' default on a poem corpus: a quatrain


def main(argv):
    del argv
    checkpoint_dir = run_dir.path_of(FLAGS.name, FLAGS.checkpoint_dir)
    try:
        check_metre_flags()
        run = run_dir.read_run(checkpoint_dir)
        if FLAGS.top_k > len(run.vocab):
            cli.fail(f"--top_k={FLAGS.top_k} is larger than the vocabulary ({len(run.vocab)}); use at most that")
        max_lines = FLAGS.max_lines
        if max_lines is None:
            max_lines = POEM_LINES if run_dir.is_poem_corpus(run.record) else 0
        cli.import_tensorflow()
        import generator  # TensorFlow's side, once the run is known to be good

        gen = generator.Generator(run.config, run.vocab, run_dir.latest_checkpoint(checkpoint_dir), FLAGS.num_samples,
                                  banned=FLAGS.ban, records=run_dir.trained_on_records(run.record))
        samples = gen.generate(
            FLAGS.start_string,
            max_length=FLAGS.max_length,
            max_lines=max_lines,
            temperature=FLAGS.temperature,
            top_k=FLAGS.top_k,
            top_p=FLAGS.top_p,
            seed=FLAGS.seed,
            form=FLAGS.form,
            acrostic=FLAGS.acrostic,
            title=FLAGS.title,
            metre=FLAGS.metre,
            rhyme=FLAGS.rhyme,
            best_of=FLAGS.best_of,
            scored=FLAGS.show_scores,
        )
    except read_utils.InputError as e:
        cli.fail(e)
    print("\n\n".join(map(shown, samples)))


def check_metre_flags():
    """--metre and --rhyme apply to poems: a one-line error when they are given without one, or
    --rhyme names no level rhyme group."""
    poem = bool(FLAGS.form or FLAGS.acrostic)
    if FLAGS["metre"].present and not poem:
        cli.fail("--metre applies to poems of a form: add --form or --acrostic, or leave --metre out")
    metre_plan.check_request(FLAGS.metre, FLAGS.rhyme, poem)


def shown(sample):
    """A sample as printed: its text; with --show_scores (sample a generator.Draft) its score on a line after it."""
    if FLAGS.show_scores:
        return f"{sample.text.rstrip(chr(10))}\n(score {sample.score:.3f})"
    return sample.rstrip("\n")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
