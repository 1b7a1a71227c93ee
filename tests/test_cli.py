"""The command line as a newcomer meets it: help, progress labels, resume summaries, the compare table."""

from __future__ import annotations

import warnings

import pytest

from lowrank_online import _threads, cli
from lowrank_online.nn import History
from lowrank_online.nn.experiment import RunConfig, compare_table

pytest.importorskip("sklearn")  # the digits data


def _help(*argv):
    with pytest.raises(SystemExit):
        cli.main([*argv, "--help"])


def test_every_option_has_help_and_a_stated_default(capsys):
    for command in ("train", "compare"):
        _help(command)
        text = capsys.readouterr().out
        assert "examples:" in text and "lowrank-online compare --data digits" in text
        parser = cli.build_parser()
        sub = parser._subparsers._group_actions[0].choices[command]
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help, f"{command} {action.option_strings} has no help"
            if action.default is not None and action.default is not False:
                assert f"(default: {action.default})" in text.replace("\n", " ").replace("  ", " ") or \
                       action.option_strings[0] in text, action.option_strings


def _hist(label, accs, epochs=None):
    h = History(label)
    for i, a in enumerate(accs, 1):
        h.epoch.append(i)
        h.test_accuracy.append(a)
        h.train_loss.append(1.0 / i)
        h.test_loss.append(1.0 / i)
        h.epoch_time.append(0.5)
        h.curvature_time.append(0.25)
        h.wall.append(0.5 * i)
    return h


def test_compare_table_says_what_it_shows():
    one = compare_table(["kfac"], {"kfac": [_hist("kfac", [0.9, 0.96])]}, [0.95])
    assert "±" not in one  # one seed: no spread to show
    row = one.splitlines()[1].split()
    assert row[-2] == "2" and row[-1] == "0.9600"  # an epoch count is an integer; 4 decimals for accuracy
    two = compare_table(["kfac"], {"kfac": [_hist("kfac", [0.9, 0.96]), _hist("kfac", [0.9, 0.7964])]}, [0.95, 0.80])
    assert "±" in two and "(1/2)" in two and "reached by k of n seeds" in two
    assert "0.8782" in two  # the mean final accuracy, not rounded to 0.88 next to a 0.80 target


def test_train_progress_labels_count_the_whole_run(monkeypatch, capsys):
    seen = []
    import importlib

    train_module = importlib.import_module("lowrank_online.nn.train")

    monkeypatch.setattr(train_module, "_progress", lambda it, enabled, desc: seen.append(desc) or it)
    cli.main(["train", "--data", "digits", "--epochs", "3", "--method", "sgd", "--threads", "1"])
    assert seen == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    out = capsys.readouterr().out
    assert "over 3 epoch(s)" in out


def test_resume_continues_the_run_exactly_and_says_what_it_covers(tmp_path, capsys):
    ckpt = str(tmp_path / "run.npz")
    cli.main(["train", "--data", "digits", "--epochs", "3", "--method", "bkfac", "--no-progress", "--threads", "1"])
    straight = capsys.readouterr().out.splitlines()
    cli.main(["train", "--data", "digits", "--epochs", "1", "--method", "bkfac", "--no-progress", "--save", ckpt])
    capsys.readouterr()
    cli.main(["train", "--data", "digits", "--epochs", "3", "--method", "bkfac", "--no-progress", "--resume", ckpt])
    resumed = capsys.readouterr().out.splitlines()
    assert any("resumed from" in line and "epochs 2-3" in line for line in resumed)
    rows = lambda lines: [" ".join(line.split()[:4]) for line in lines if line.strip()[:1] in "23"]  # noqa: E731
    assert rows(resumed) == rows(straight)[-2:]  # the same losses and accuracies as the uninterrupted run
    assert any("over epochs 2-3" in line for line in resumed)


def test_bad_values_exit_with_a_message_not_a_traceback(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--data", "digits", "--epochs", "1", "--method", "kfac", "--decay", "2"])
    assert info.value.code == 2 and "`decay` must be" in capsys.readouterr().err


def test_oversubscription_is_detected_and_warned_once(monkeypatch):
    monkeypatch.setattr(_threads, "_warned", False)
    monkeypatch.setattr(_threads, "_pools", lambda: [{"num_threads": 2}])
    with pytest.warns(_threads.OversubscriptionWarning, match="oversubscribe"):
        assert _threads.check_oversubscription(load=2.0, cores=2) is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _threads.check_oversubscription(load=2.0, cores=2) is not None  # said once
        assert _threads.check_oversubscription(load=0.0, cores=2) is None
        monkeypatch.setattr(_threads, "_pools", lambda: [{"num_threads": 1}])
        assert _threads.check_oversubscription(load=8.0, cores=2) is None  # one thread: nothing to advise


def test_run_config_is_the_cli_options():
    args = cli.build_parser().parse_args(["compare", "--data", "digits", "--rank", "7", "--damping-adaptation", "lm"])
    config = cli._config(args)
    assert isinstance(config, RunConfig) and config.rank == 7 and config.damping_adaptation == "lm"
