"""--time_budget: the steps it buys, resume of a budgeted run, --max_steps winning."""

import json
import os
import shutil

import pytest

import cli
import trainer
from conftest import TINY_MODEL, couplets, read_run, run_script


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("1h30m", 5400), ("600", 600), ("2.5m", 150)])
def test_durations_read_as_seconds(text, seconds):
    assert cli.duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "10x", "0s", "-5m", "m"])
def test_what_is_not_a_duration_is_refused(text):
    assert cli.duration_seconds(text) is None


def test_the_steps_fill_the_time_left_with_the_events_on_the_way():
    # 10 steps/s and 5 s an event (the end counts as one): 850 steps pass 300 and 600, so
    # 85 s + 3 events = 100 s; one step more no longer fits.
    assert trainer.steps_within(100, 0, 10, 5, (300,)) == 850
    assert trainer.steps_within(100, 1000, 10, 5, (300,)) == 1800  # counted from its start: passes 1200 and 1500
    assert trainer.steps_within(100, 0, 10, 0, (300,)) == 1000
    assert trainer.steps_within(3, 40, 10, 5, (300,)) == 41  # no time left: one step, to end the schedule


def budget_args(corpus, run_dir, *extra):
    return ["--input", corpus, "--checkpoint_dir", run_dir, *TINY_MODEL, "--warmup_steps", 20, "--eval_every", 400,
            "--save_every_n", 20, "--max_to_keep", 1000, "--log_every_n", 100, "--eval_poems", 0, *extra]


def final_learning_rate(run_dir):
    return read_run(os.path.join(run_dir, "logs", "train"))["learning_rate"][-1]


@pytest.fixture(scope="module")
def budgeted_run(tmp_path_factory):
    """(run directory, corpus, train.py's stderr) of a toy run trained under --time_budget 15s."""
    root = tmp_path_factory.mktemp("budget")
    corpus = root / "toy.txt"
    corpus.write_text(couplets(600), encoding="utf-8")
    result = run_script("train.py", *budget_args(corpus, root / "run", "--time_budget", "15s"))
    return root / "run", corpus, result.stderr


@pytest.mark.process
def test_a_budgeted_run_decides_its_steps_and_ends_on_the_schedules_floor(budgeted_run):
    run_dir, _, stderr = budgeted_run
    config = json.load(open(run_dir / "config.json", encoding="utf-8"))
    steps = config["training"]["max_steps"]
    assert config["training"]["time_budget"] == "15s" and f"training for {steps} steps" in stderr
    step, rate = final_learning_rate(run_dir)
    assert step == steps and rate == pytest.approx(0.008 * 0.05, rel=1e-3)  # --min_lr_fraction of the peak


@pytest.mark.process
def test_a_budgeted_run_resumed_finishes_the_same_schedule(budgeted_run, tmp_path):
    finished, corpus, _ = budgeted_run
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    decided = json.load(open(run_dir / "config.json", encoding="utf-8"))["training"]["max_steps"]
    # As if it had been stopped at step 20: its first checkpoint is the latest again.
    (run_dir / "checkpoint").write_text('model_checkpoint_path: "ckpt-20"\nall_model_checkpoint_paths: "ckpt-20"\n')
    shutil.rmtree(run_dir / "logs")
    resumed = run_script("train.py", "--input", corpus, "--checkpoint_dir", run_dir)
    assert "resumed from" in resumed.stderr and "at step 20" in resumed.stderr
    assert "training for" not in resumed.stderr  # nothing decided again
    assert json.load(open(run_dir / "config.json", encoding="utf-8"))["training"]["max_steps"] == decided
    step, rate = final_learning_rate(run_dir)
    assert step == decided and rate == pytest.approx(0.008 * 0.05, rel=1e-3)


@pytest.mark.process
def test_max_steps_given_wins_over_the_budget(toy_corpus, tmp_path):
    run_dir = tmp_path / "run"
    result = run_script("train.py", *budget_args(toy_corpus, run_dir, "--time_budget", "1h", "--max_steps", 30))
    config = json.load(open(run_dir / "config.json", encoding="utf-8"))
    assert config["training"]["max_steps"] == 30 and "training for" not in result.stderr
    assert final_learning_rate(run_dir)[0] == 30


@pytest.mark.process
def test_a_bad_budget_is_refused_in_one_line(tmp_path):
    result = run_script("train.py", "--checkpoint_dir", tmp_path / "run", "--time_budget", "ten minutes", check=False)
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1
    assert "--time_budget must be a duration" in result.stderr
