"""What every entry point shares: quiet library logging and one-line errors."""

import logging as std_logging
import os
import sys

from absl import logging

HERE = os.path.dirname(os.path.abspath(__file__))


def _ours_or_warning(record):
    # TensorFlow logs every checkpoint write at INFO through absl; keep INFO for our own scripts.
    return record.levelno >= std_logging.WARNING or os.path.dirname(record.pathname) == HERE


def quiet_library_info():
    logging.get_absl_handler().addFilter(_ours_or_warning)
    std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)  # its own handler, e.g. tf.distribute's INFO


def fail(message):
    """Ends the program with one line on stderr and exit status 1."""
    sys.exit(f"{os.path.basename(sys.argv[0])}: error: {message}")
