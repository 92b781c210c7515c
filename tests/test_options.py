"""Class O: every option value of every command is checked at the command line (type, range, finiteness,
HOST:PORT), naming the option, before it reaches JAX, XLA or Beam; and a mistyped option of `berta-jax beam` is
refused before anything is handed to Beam (Beam only logs an option it cannot parse, and runs without it)."""

from __future__ import annotations

import pytest

from berta_jax.cli import main

ENCODE = ["encode", "in.txt", "-o", "out.npy", "--model", "m"]
BEAM = ["beam", "in.txt", "-o", "out/", "--model", "m"]
PARITY = ["parity", "--model", "m"]

BAD = [
    # (command, option and value, what the error names)
    *[(ENCODE, [opt, v], opt) for opt in ("--truncate-dim", "--max-batch-tokens", "--batch-size", "--num-processes",
                                           "--peer-timeout") for v in ("0", "-5", "nan", "1.5", "x", "")],
    *[(ENCODE, ["--process-id", v], "--process-id") for v in ("-1", "nan", "x", "1.0")],
    *[(ENCODE, ["--split-size", v], "--split-size") for v in ("0", "-1", "nan", "4X", "")],
    *[(ENCODE, ["--log-every", v], "--log-every") for v in ("-1", "nan", "inf", "x")],
    *[(ENCODE, ["--coordinator", v], "--coordinator") for v in ("localhost", "localhost:", ":1234", "host:0",
                                                                 "host:65536", "host:port", "a b:1")],
    *[(ENCODE, [opt, "bogus"], opt) for opt in ("--precision", "--dtype", "--format", "--on-error")],
    *[(BEAM, [opt, v], opt) for opt in ("--truncate-dim", "--max-batch-tokens", "--min-batch-size",
                                        "--max-batch-size") for v in ("0", "-5", "nan", "x")],
    *[(BEAM, ["--split-mb", v], "--split-mb") for v in ("nan", "inf", "0", "-1", "x")],
    *[(BEAM, [opt, "bogus"], opt) for opt in ("--dtype", "--on-error")],
    *[(PARITY, [opt, v], opt) for opt in ("--tolerance", "--embedding-tolerance") for v in ("nan", "-1", "inf", "x")],
    *[(PARITY, ["--min-cosine", v], "--min-cosine") for v in ("nan", "1.5", "-2", "x")],
    (PARITY, ["--dtype", "bogus"], "--dtype"),
    (["convert", "a", "b", "--to", "bogus"], [], "--to"),
]


@pytest.mark.parametrize("command, option, named", BAD, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_a_bad_option_value_is_one_line_naming_the_option(command, option, named, capsys):
    with pytest.raises(SystemExit) as stopped:
        main([*command, *option])
    err = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and f"argument {named}" in err[-1] and "Traceback" not in "\n".join(err), err


@pytest.mark.parametrize("command, options, message", [
    (ENCODE, ["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"],
     "--process-id 2 is not below --num-processes 2"),
    (ENCODE, ["--coordinator", "h:1", "--num-processes", "1", "--process-id", "5"],
     "--process-id 5 is not below --num-processes 1"),
    (ENCODE, ["--num-processes", "2", "--process-id", "0"], "go with --coordinator"),
    (BEAM, ["--min-batch-size", "10", "--max-batch-size", "5"], "--min-batch-size 10 is above --max-batch-size 5"),
])
def test_options_that_contradict_each_other_are_named(command, options, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        main([*command, *options])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and message in err and "Traceback" not in err, err


def test_good_values_pass_their_types():
    from berta_jax.cli.main import parse

    args = parse([*ENCODE, "--coordinator", "[::1]:8476", "--num-processes", "2", "--process-id", "1",
                  "--peer-timeout", "5", "--split-size", "512K", "--log-every", "0"])
    assert (args.coordinator, args.num_processes, args.process_id, args.split_size) == ("[::1]:8476", 2, 1, 512 << 10)
    args = parse([*BEAM, "--split-mb", "0.5", "--", "--runner=DirectRunner"])
    assert args.split_mb == 0.5 and args.pipeline_args == ["--runner=DirectRunner"]


@pytest.mark.parametrize("typo, like", [("--id-feild", "--id-field"), ("--text-feild=body", "--text-field"),
                                        ("--prompt-nmae", "--prompt-name"), ("--on-eror", "--on-error"),
                                        ("--bogus", None)])
def test_a_mistyped_beam_option_is_refused_before_beam_sees_it(typo, like, capsys):
    with pytest.raises(SystemExit) as stopped:
        main([*BEAM, *typo.split(" "), "id"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and f"unknown option {typo.split('=')[0]}" in err, err
    assert (f"did you mean {like}?" in err) if like else "did you mean" not in err


def test_beam_pipeline_options_pass_before_and_after_the_dashes():
    from berta_jax.cli.main import parse

    args = parse([*BEAM, "--project", "p", "--job_name=j", "--", "--temp_location", "gs://t"])
    assert args.pipeline_args == ["--project", "p", "--job_name=j", "--temp_location", "gs://t"]
    assert args.prompt is None and args.prompt_name is None  # --project is Beam's, not a prefix of --prompt
