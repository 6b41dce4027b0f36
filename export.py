"""Exports a trained run as a SavedModel that generates text and poems without this repository.

    python export.py --name poetry --out exported/poetry/1
    python export.py --checkpoint_dir checkpoints/tang --out /models/poems/1

Any TensorFlow program loads it with tf.saved_model.load, and TensorFlow Serving serves it; for
the same run, settings and seed it writes the same texts as sample.py. saved_generator.py
describes its serving_default signature.
"""

import os

from absl import app, flags, logging

import cli
import read_utils
import run_dir

flags.DEFINE_string("name", "default", "run name: reads checkpoints/<name>")
flags.DEFINE_string("checkpoint_dir", None, "run directory written by train.py (default: checkpoints/<name>)")
flags.DEFINE_string("out", None, "directory to write the SavedModel to; must not exist yet (TensorFlow Serving "
                    "reads MODEL/VERSION directories, e.g. exported/poems/1)")
flags.mark_flag_as_required("out")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    checkpoint_dir = run_dir.path_of(FLAGS.name, FLAGS.checkpoint_dir)
    if os.path.exists(FLAGS.out):
        cli.fail(f"--out {FLAGS.out} exists already; export into a new directory (for TensorFlow Serving, the "
                 "model's next version number, e.g. exported/poems/2)")
    try:
        run = run_dir.read_run(checkpoint_dir)
        cli.import_tensorflow()
        import generator  # TensorFlow's side, once the run is known to be good
        import saved_generator

        gen = generator.Generator(run.config, run.vocab, run_dir.latest_checkpoint(checkpoint_dir),
                                  records=run_dir.trained_on_records(run.record))
    except read_utils.InputError as e:
        cli.fail(e)
    try:
        saved_generator.save(saved_generator.SavedGenerator(gen), FLAGS.out)
    except OSError as e:
        cli.fail(f"cannot write --out {FLAGS.out} ({e.strerror or e}); choose a directory you can write to")
    logging.info("wrote the SavedModel of %s to %s", checkpoint_dir, FLAGS.out)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
