"""What a user meets on the command line: help, version, progress per batch, clean exits, the demo's honest
fallback, the parity report, convert's messages, and no third-party noise."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from berta_jax import Encoder, __version__
from berta_jax.cli import main
from berta_jax.cli.commands import card_cosines
from tests.helpers import REPO, berta_jax, cli_env
from tests.test_job import big_input


def test_version_and_help_with_examples(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"berta-jax {__version__}"
    for command in ("encode", "convert", "parity", "demo"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "example" in capsys.readouterr().out, command


def test_progress_moves_per_batch_and_rates_count_the_same_rows(tmp_path, tiny_bert_dir, capsys):
    source = big_input(tmp_path / "in.txt", 300)
    code = main(["encode", str(source), "-o", str(tmp_path / "out.npy"), "--model", str(tiny_bert_dir),
                 "--split-size", "12K", "--max-batch-tokens", "256", "--log-every", "0"])
    err = capsys.readouterr().err
    assert code == 0
    lines = [line for line in err.splitlines() if line.startswith("embedded ")]
    assert len(lines) > 10  # one split, yet a line per batch
    assert "texts/s" in lines[0] and int(lines[0].split()[1].split("/")[0]) < 300  # compile excluded
    assert "tokens/s" in lines[-1] and "ETA" in lines[-2] and lines[-1].split(", ")[1] == "100% (0 resumed)"
    fractions = [int(line.split(", ")[1].split("%")[0]) for line in lines]
    assert fractions == sorted(fractions) and int(lines[-1].split()[1]) == 300


def test_summary_grammar_and_resumed_counts(tmp_path, tiny_bert_dir, capsys):
    source = big_input(tmp_path / "in.txt", 10)
    assert main(["encode", str(source), "-o", str(tmp_path / "out.npy"), "--model", str(tiny_bert_dir), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "10 texts (0 resumed from 0 splits)" in out
    one = tmp_path / "one.txt"
    one.write_text("single\n")
    assert main(["encode", str(one), "-o", str(tmp_path / "one.npy"), "--model", str(tiny_bert_dir), "--quiet"]) == 0
    assert "wrote" in (out := capsys.readouterr().out) and "1 text (" in out


def test_a_refused_run_answers_before_loading_anything_heavy(tmp_path, tiny_bert_dir):
    """Existing output, changed inputs: answered from the cheap checks; JAX, flax and transformers never load."""
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    (tmp_path / "out.npy").write_bytes(b"someone's")
    probe = ("import sys; from berta_jax.cli import main; code = main(sys.argv[1:]); "
             "heavy = sorted(m for m in ('jax', 'flax', 'transformers', 'torch') if m in sys.modules); "
             "print('heavy:', heavy); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", probe, "encode", str(source), "-o", str(tmp_path / "out.npy"),
                           "--model", str(tiny_bert_dir)], capture_output=True, text=True, env=cli_env(), cwd=REPO)
    assert done.returncode == 2 and "exists; pass --overwrite" in done.stderr
    assert "heavy: []" in done.stdout


def test_demo_falls_back_honestly(tmp_path, minilm_dir):
    env = cli_env(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"))
    done = berta_jax("demo", env=env)
    notice = done.stderr[done.stderr.index("sergeyzh/BERTA unavailable"):].split("card's.")[0].splitlines()
    said = " ".join(notice)  # on stderr, wrapped (a path is never broken)
    assert "FALLING BACK to all-MiniLM-L6-v2" in said and "not comparable with the BERTA model" in said
    assert len(notice) > 1 and all(len(line) <= 88 or str(minilm_dir) in line for line in notice)
    lines = done.stdout.splitlines()
    assert lines[0] == f"model: {minilm_dir}" and "defines none of BERTA's prompts" in lines[1]
    assert all("model card" not in line for line in lines[2:5])  # like is compared only with like
    printed = [float(line.split()[0]) for line in lines[2:5]]
    np.testing.assert_allclose(printed, card_cosines(Encoder.from_pretrained(minilm_dir)), atol=1e-6)


def test_demo_on_a_model_with_berta_prompts_shows_the_card(tiny_bert_dir):
    lines = berta_jax("demo", "--model", str(tiny_bert_dir)).stdout.splitlines()
    assert lines[0] == f"model: {tiny_bert_dir}" and len(lines) == 4
    assert all("(model card: " in line and "paraphrase: " in lines[1] for line in lines[1:])


def test_parity_command_names_every_stage_and_prints_no_third_party_noise(tiny_bert_dir):
    """In a subprocess, as a user runs it (MiniLM's parity, stage by stage, is test_parity's)."""
    user_env = {k: v for k, v in cli_env().items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    done = berta_jax("parity", "--model", str(tiny_bert_dir), env=user_env)
    lines = done.stdout.splitlines()
    stages = [line.split()[0] for line in lines if "max abs diff" in line]
    assert stages == ["embeddings", "layer", "layer", "pooled", "sentence"]
    assert lines[-1] == "PASS"
    assert "Loading weights" not in done.stderr + done.stdout and "PyTorch was not found" not in done.stderr
    no_torch = subprocess.run([sys.executable, "-c", "import sys; sys.modules['torch'] = None; "
                               "from berta_jax import Encoder; Encoder.from_pretrained(sys.argv[1]).encode(['x'])",
                               str(tiny_bert_dir)], capture_output=True, text=True, env=user_env, cwd=REPO)
    assert no_torch.returncode == 0 and "PyTorch was not found" not in no_torch.stderr + no_torch.stdout


def test_parity_command_on_a_berta_jax_only_folder(tiny_bert_dir, tmp_path, capsys):
    from berta_jax.convert.folders import hf_folder_to_flax

    hf_folder_to_flax(tiny_bert_dir, tmp_path / "flax-only")
    assert main(["parity", "--model", str(tmp_path / "flax-only")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "PASS"


def test_parity_in_bfloat16_is_held_to_the_cosine_bound_and_fails_below_it_with_the_figure(tiny_bert_dir, capsys):
    """16-bit compute is not held to float32's max-abs tolerances: it passes at a bound its lowest cosine reaches and
    fails just above it, naming the figure and the text."""
    from berta_jax.parity import parity_report

    report = parity_report(str(tiny_bert_dir), ["один", "two words", "три слова тут", ""], dtype="bfloat16")
    assert report.dtype == "bfloat16" and 0.999 <= report.cosine_min < 1.0
    texts = tiny_bert_dir.parent / "parity-texts.txt"
    texts.write_text("один\ntwo words\nтри слова тут\n\n", encoding="utf-8")
    common = ["parity", "--model", str(tiny_bert_dir), "--texts", str(texts), "--dtype", "bfloat16"]
    assert main([*common, "--min-cosine", repr(report.cosine_min)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "berta-jax bfloat16 (asked for)" in out[0] and out[-1] == "PASS"
    assert all("bfloat16: not held to float32's tolerance" in line for line in out if "max abs diff" in line)
    bound = (report.cosine_min + 1.0) / 2
    assert main([*common, "--min-cosine", repr(bound)]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"FAIL: sentence embeddings in bfloat16: cosine {report.cosine_min:.7f} to float32 on text "
        f"{report.cosine_argmin + 1}, below the bound {bound!r}")


def test_a_16_bit_parity_check_without_sentence_transformers_says_what_it_needs(tiny_bert_dir):
    from berta_jax.parity import Reference, compare

    encoder, bert = Encoder.from_pretrained(tiny_bert_dir, dtype="bfloat16"), Reference.load(tiny_bert_dir).bert
    with pytest.raises(RuntimeError, match="bfloat16 parity check .* pip install sentence-transformers"):
        compare(encoder, Reference(bert, None), ["x"])


def test_parity_on_an_empty_texts_file_names_the_file(tiny_bert_dir, tmp_path, capsys):
    """An empty file used to end in the tokenizer's IndexError; the API refuses no texts too."""
    from berta_jax.parity import Reference, compare

    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert main(["parity", "--model", str(tiny_bert_dir), "--texts", str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"{empty}: holds no lines; give at least one text" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="at least one text"):
        compare(Encoder.from_pretrained(tiny_bert_dir), Reference(None, None), [])


def test_parity_texts_file_errors_name_the_line(tiny_bert_dir, tmp_path):
    bad = tmp_path / "texts.txt"
    bad.write_bytes("ok\nтоже ok\n".encode() + b"bad \xff byte\n")
    done = berta_jax("parity", "--model", str(tiny_bert_dir), "--texts", str(bad), check=False)
    assert done.returncode == 2 and "texts.txt:3: not valid UTF-8" in done.stderr


def test_parity_texts_longer_than_the_context_are_counted_not_warned_about(tiny_bert_dir, tmp_path, capsys):
    import warnings

    texts = tmp_path / "texts.txt"
    texts.write_text("word " * 200 + "\nshort\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["parity", "--model", str(tiny_bert_dir), "--texts", str(texts)]) == 0
    out = capsys.readouterr().out
    assert "1 of 2 texts are longer than the context: both sides compare their first tokens" in out
    assert out.splitlines()[-1] == "PASS" and not [w for w in caught if "truncated" in str(w.message)]


def test_convert_says_what_a_folder_is_and_which_command_to_use(tiny_bert_dir, tmp_path, capsys):
    assert main(["convert", str(tiny_bert_dir), str(tmp_path / "flax")]) == 0
    assert main(["convert", str(tmp_path / "flax"), str(tmp_path / "again")]) == 2
    assert "is already a berta-jax folder" in (err := capsys.readouterr().err) and "convert --to hf" in err
    assert main(["convert", "--to", "hf", str(tiny_bert_dir), str(tmp_path / "hf")]) == 2
    assert "is an HF folder, not a berta-jax folder" in (err := capsys.readouterr().err) and "berta-jax convert " in err
    empty = tmp_path / "empty"
    shutil.copytree(tiny_bert_dir, empty)
    (empty / "model.safetensors").unlink()
    assert main(["convert", "--to", "hf", str(empty), str(tmp_path / "x")]) == 2
    assert "a folder with no weights" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["encode", "beam"])
def test_a_batch_budget_smaller_than_the_context_is_one_line_before_any_work(command, tmp_path, tiny_bert_dir, capsys):
    (tmp_path / "in.txt").write_text("Кот\n")
    out = tmp_path / ("out.npy" if command == "encode" else "out")
    assert main([command, str(tmp_path / "in.txt"), "-o", str(out), "--model", str(tiny_bert_dir),
                 "--max-batch-tokens", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-batch-tokens 1 is smaller than the model's max_seq_length 32" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_a_closed_stdout_after_a_finished_run_is_not_an_error(tmp_path, tiny_bert_dir):
    """`berta-jax encode ... | head -c0`: the reader leaves before the summary line; the run still succeeded."""
    (tmp_path / "in.txt").write_text("Кот\nA dog.\n")
    args = ("encode", str(tmp_path / "in.txt"), "-o", str(tmp_path / "out.npy"), "--model", str(tiny_bert_dir))
    berta_jax(*args)
    for run in ("again, already complete", "with --overwrite, embedding again"):
        extra = ("--overwrite",) if "overwrite" in run else ()
        proc = subprocess.Popen([sys.executable, "-m", "berta_jax", *args, *extra], cwd=REPO, env=cli_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc.stdout.close()  # before the child can have printed anything: its summary line meets a closed pipe
        err = proc.stderr.read()
        assert proc.wait(timeout=120) == 0, (run, err)
        assert "Broken pipe" not in err and "--resume" not in err, (run, err)
    assert np.load(tmp_path / "out.npy").shape == (2, 16)


@pytest.mark.parametrize("option, named", [("--modle", "did you mean --model?"), ("--chunk-rows", "--split-size"),
                                           ("--bogus", "unknown option --bogus")])
def test_a_mistyped_or_retired_option_is_named_before_any_missing_one(option, named, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["encode", "in.txt", "-o", "out.npy", option, "5"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and f"unknown option {option}" in err and named in err and "required" not in err


@pytest.mark.parametrize("flag, value, named", [("--min-cosine", "nan", "a cosine must be a finite number in [-1, 1]"),
                                                ("--min-cosine", "1.5", "a cosine"),
                                                ("--tolerance", "-1e-4", "a max abs difference must be a finite number >= 0"),
                                                ("--embedding-tolerance", "inf", "a max abs difference")])
def test_parity_bars_that_are_no_numbers_or_out_of_range_are_refused_naming_the_flag(capsys, flag, value, named):
    """A NaN bar would fail every run and an infinite one pass every run: both are refused before any model loads."""
    with pytest.raises(SystemExit) as stop:
        main(["parity", "--model", "/nowhere", f"{flag}={value}"])
    assert stop.value.code == 2 and f"argument {flag}: {value!r}: {named}" in capsys.readouterr().err


def test_a_model_folder_given_as_dot_is_named_by_its_resolved_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["encode", "in.txt", "-o", "out.npy", "--model", "."]) == 2
    err = capsys.readouterr().err
    assert f"config.json: file not found (the model folder is {tmp_path.resolve()})" in err
