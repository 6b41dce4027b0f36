"""What every entry point shares: one-line errors, and TensorFlow started quietly after the flags.

The entry points import TensorFlow only once their flags and inputs are checked (import_tensorflow),
so a mistyped flag or a missing file is refused at once, and TensorFlow's C++ start-up lines (CUDA
stubs, oneDNN, CPU features, absl's pre-initialisation warning) stay off the terminal unless
--verbose asks for them.
"""

import logging as std_logging
import os
import re
import sys
import tempfile

from absl import flags, logging

HERE = os.path.dirname(os.path.abspath(__file__))

flags.DEFINE_boolean("verbose", False, "show TensorFlow's own start-up and INFO lines too")


def fail(message):
    """Ends the program with one line on stderr and exit status 1."""
    sys.exit(f"{os.path.basename(sys.argv[0])}: error: {message}")


def import_tensorflow():
    """Imports TensorFlow and starts its devices, its C++ start-up lines hidden unless --verbose.

    TF_CPP_MIN_LOG_LEVEL only reaches lines logged after absl's C++ logging starts; the lines before
    that are written straight to file descriptor 2, so that descriptor points at a temporary file
    while TensorFlow loads. If the import fails, what it wrote is shown after all.
    """
    verbose = flags.FLAGS.is_parsed() and flags.FLAGS.verbose
    if verbose:
        import tensorflow as tf

        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # also "failed call to cuInit" where there is no GPU
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # device start-up logs a second round
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    _quiet_library_info()
    return tf


def _ours_or_warning(record):
    # TensorFlow logs every checkpoint write at INFO through absl; keep INFO for our own scripts.
    return record.levelno >= std_logging.WARNING or os.path.dirname(record.pathname) == HERE


def _quiet_library_info():
    logging.get_absl_handler().addFilter(_ours_or_warning)
    std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)  # its own handler, e.g. tf.distribute's INFO


def parse_flags(argv):
    """absl's flag parsing with a bad flag reported in one line (for app.run's flags_parser)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"{os.path.basename(argv[0])}: error: {e}; see --helpshort")


def duration_seconds(text):
    """Seconds in a duration such as "90s", "10m", "1h30m" or "600" (seconds); None if it is not one."""
    match = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", text.strip())
    if not text.strip() or not match:
        return None
    hours, minutes, seconds = (float(part or 0) for part in match.groups())
    total = 3600 * hours + 60 * minutes + seconds
    return total if total > 0 else None
