"""Serves one trained run: a page to write poems in a browser, and a JSON API.

    python serve.py                              # checkpoints/default on http://127.0.0.1:8000
    python serve.py --name poetry --port 8080
    python serve.py --host 0.0.0.0               # reachable from other machines too

GET / is the page; POST /api/poems takes a JSON object whose fields are named as sample.py's
flags (all optional) and answers {"poems": [...], "settings": {...}}; GET /api/health says the
server is up and which run it serves; GET /openapi.json describes the API. Concurrent requests
are written together in calls of up to --max_batch streams. Ctrl-C or SIGTERM stops the server
once the requests it is answering are answered.
"""

import os
import signal
import socket
import sys

from absl import app, flags, logging

import cli
import read_utils
import run_dir

flags.DEFINE_string("name", "default", "run name: serves checkpoints/<name>")
flags.DEFINE_string("checkpoint_dir", None, "run directory written by train.py (default: checkpoints/<name>)")
flags.DEFINE_string("host", "127.0.0.1", "address to listen on; 0.0.0.0 (or ::) serves every network this machine is on")
flags.DEFINE_integer("port", 8000, "port to listen on", lower_bound=1, upper_bound=65535)
flags.DEFINE_integer("max_batch", 64, "most poems one generation call writes, and one request may ask for", lower_bound=1)
flags.DEFINE_float("batch_wait_ms", 20.0, "how long a call waits for one more request to share it, in milliseconds "
                   "(at most serving.GATHER_WAITS times this in all)",
                   lower_bound=0)
flags.DEFINE_integer("max_body_bytes", 16_384, "largest request body accepted, in bytes", lower_bound=1024)
flags.DEFINE_boolean("access_log", True, "log every request")
FLAGS = flags.FLAGS

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web", "index.html")


def main(argv):
    del argv
    for stop_signal in (signal.SIGINT, signal.SIGTERM):  # while starting, either stops at once
        signal.signal(stop_signal, lambda signum, frame: sys.exit(0))
    checkpoint_dir = run_dir.path_of(FLAGS.name, FLAGS.checkpoint_dir)
    try:
        saved = run_dir.read_run(checkpoint_dir)
        listener = listen(FLAGS.host, FLAGS.port)  # before the slow start, so a busy port fails at once
        cli.import_tensorflow()
        import serving  # TensorFlow's side, once the run and the port are known to be good

        path = run_dir.latest_checkpoint(checkpoint_dir)
        run = serving.describe_run(checkpoint_dir, path)
        pool = serving.GeneratorPool(saved, path, FLAGS.max_batch)
    except read_utils.InputError as e:
        cli.fail(e)
    pool.warm_up()
    with open(PAGE, encoding="utf-8") as f:
        page = f.read()
    web_app = serving.make_app(pool, run, page, FLAGS.max_batch, FLAGS.batch_wait_ms / 1000, FLAGS.max_body_bytes)
    host = f"[{FLAGS.host}]" if ":" in FLAGS.host else FLAGS.host
    logging.info("serving %s (step %s) on http://%s:%d", checkpoint_dir, run["step"], host, FLAGS.port)
    if FLAGS.host in ("0.0.0.0", "::"):
        logging.warning("listening on every network interface: anyone who reaches this machine can use the server")
    serve_until_stopped(web_app, listener)


def listen(host, port):
    """A listening socket on host:port, or an InputError saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as e:
        raise read_utils.InputError(
            f"cannot listen on {host}:{port} ({e.strerror}); pass another --port, or a --host of this machine"
        ) from None


def serve_until_stopped(web_app, listener):
    """Serves until Ctrl-C or SIGTERM; the requests being answered finish, then main returns (exit 0).

    uvicorn takes both signals while it serves, shuts down gracefully, and then raises the signal
    again for the handler that was there before: the one installed here, which does nothing more.
    """
    import uvicorn

    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, lambda signum, frame: None)
    config = uvicorn.Config(web_app, log_level="info", access_log=FLAGS.access_log)
    uvicorn.Server(config).run(sockets=[listener])


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
