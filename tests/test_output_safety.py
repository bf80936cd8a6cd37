"""Outputs named by the user never replace what ticketlab did not write as that output, and an
export killed at any instant leaves nothing or the complete directory, which a rerun accepts.

* ``report --png``: only a PNG file may be replaced, and inside a run only its own report*.png;
* ``export --out``: never inside its source or any run, and built under a temporary sibling name,
  so a SIGKILL at a chosen write (`run_harness` kill points, in a forked child: `children`)
  followed by a rerun gives the bytes of an uninterrupted export, with no temporaries left.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ticketlab.cli import main
from ticketlab.files import is_temporary
from ticketlab.outputs import PNG_SIGNATURE

import children
import run_harness



@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished one-round IMP run on toy data (with its report.png)."""
    out = tmp_path_factory.mktemp("safety") / "run"
    run_harness.run("imp", out)
    assert main(["report", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def reference(run, tmp_path_factory) -> Path:
    """An uninterrupted export of the run's round 1."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main(["export", str(run / "seed-0" / "round-01"), "--out", str(out)]) == 0
    return out


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` -> its bytes (None for a directory), symlinks not followed."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def files_of(root: Path) -> dict[str, bytes]:
    return {name: data for name, data in snapshot(root).items() if data is not None}


def refused(capsys, *argv: str) -> str:
    """Run the CLI, expect exit code 2 and one line on stderr; return that line."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def no_temporaries(directory: Path) -> bool:
    return not any(is_temporary(p.name) for p in directory.rglob("*"))


# --- report --png ----------------------------------------------------------------------------------
def _config(run: Path, tmp: Path) -> Path:
    return run / "config.json"


def _text_named_png(run: Path, tmp: Path) -> Path:
    (tmp / "notes.png").write_text("my notes, not a plot\n")
    return tmp / "notes.png"


def _new_file_in_a_round(run: Path, tmp: Path) -> Path:
    return run / "seed-0" / "round-01" / "plot.png"


def _another_commands_png(run: Path, tmp: Path) -> Path:
    return run / "compare.png"   # a PNG name, but not a report's own file


def _link_to_config(run: Path, tmp: Path) -> Path:
    (tmp / "link.png").symlink_to(run / "config.json")
    return tmp / "link.png"


@pytest.mark.parametrize("target", [_config, _text_named_png, _new_file_in_a_round, _another_commands_png,
                                    _link_to_config])
def test_report_never_writes_a_plot_over_what_is_not_its_own(run, tmp_path, capsys, target):
    png = target(run, tmp_path)
    before, outside = snapshot(run), snapshot(tmp_path)
    err = refused(capsys, "report", str(run), "--png", str(png))
    assert "--png" in err and str(png) in err
    assert snapshot(run) == before and snapshot(tmp_path) == outside


def test_report_replaces_its_own_pngs_and_nothing_else(run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    for _ in range(2):  # the default report.png, rerun; a PNG elsewhere, replaced
        assert main(["report", str(copy)]) == 0
        assert main(["report", str(copy), "--png", str(tmp_path / "plots" / "o.png")]) == 0
    for png in (copy / "report.png", tmp_path / "plots" / "o.png"):
        assert png.read_bytes().startswith(PNG_SIGNATURE)
    (copy / "report.png").unlink()
    (copy / "report.png").write_text("a file of the user's\n")
    err = refused(capsys, "report", str(copy))
    assert "not a PNG file" in err and (copy / "report.png").read_text() == "a file of the user's\n"
    (copy / "report.png").unlink()
    (copy / "report.png").mkdir()
    assert "is a directory" in refused(capsys, "report", str(copy))
    assert "is a directory" in refused(capsys, "report", str(copy), "--png", str(tmp_path / "plots"))
    assert (copy / "report.png").is_dir() and sorted(snapshot(tmp_path / "plots")) == ["o.png"]


# --- export --out ----------------------------------------------------------------------------------
def _inside_the_run(run: Path, tmp: Path) -> tuple[Path, Path]:
    return run, run / "seed-0" / "newdir"


def _inside_the_run_of_a_round(run: Path, tmp: Path) -> tuple[Path, Path]:
    return run / "seed-0" / "round-01", run / "exports" / "ticket"


def _through_a_symlink(run: Path, tmp: Path) -> tuple[Path, Path]:
    (tmp / "link").symlink_to(run)
    return run, tmp / "link" / "newdir"


def _inside_the_round_itself(run: Path, tmp: Path) -> tuple[Path, Path]:
    return run / "seed-0" / "round-01", run / "seed-0" / "round-01" / "ticket"


@pytest.mark.parametrize("where", [_inside_the_run, _inside_the_run_of_a_round, _through_a_symlink,
                                   _inside_the_round_itself])
def test_export_never_writes_inside_its_source_or_a_run(run, tmp_path, capsys, where):
    src, out = where(run, tmp_path)
    before = snapshot(run)
    err = refused(capsys, "export", str(src), "--out", str(out))
    assert "--out" in err and "inside" in err
    assert snapshot(run) == before and not out.exists()


def test_export_never_writes_inside_another_export(run, reference, tmp_path, capsys):
    before = snapshot(reference)
    err = refused(capsys, "export", str(run / "seed-0" / "round-01"), "--out", str(reference / "again"))
    assert "inside the ticketlab directory" in err and snapshot(reference) == before


# --- kills -----------------------------------------------------------------------------------------
#: Where an export is killed: its temporary directory just made (empty); the weights written, the
#: record not renamed yet; the package complete under its temporary name; the package renamed into
#: place, the command not finished.
EXPORT_KILLS = ["after-mkdir:.out.*.tmp:1", "before-replace:ticketlab.json:1", "after-replace:ticketlab.json:1",
                "after-replace:out:1"]


def killed_export(point: str, src: Path, out: Path) -> children.Completed:
    """``ticketlab export SRC --out OUT`` in a child that SIGKILLs itself at ``point``."""
    return children.run(children.cli_killed_at, point, ["export", str(src), "--out", str(out)], timeout=120)


def test_an_export_killed_at_any_write_then_rerun_equals_an_uninterrupted_one(run, reference, tmp_path):
    unit = run / "seed-0" / "round-01"
    for index, point in enumerate(EXPORT_KILLS):
        out = tmp_path / str(index) / "out"
        killed = killed_export(point, unit, out)
        assert killed.returncode == -9, (point, killed.stderr[-2000:])
        assert not out.exists() or files_of(out) == files_of(reference), point  # nothing, or all of it
        assert main(["export", str(unit), "--out", str(out)]) == 0, point
        assert files_of(out) == files_of(reference), point
        assert no_temporaries(out.parent), (point, sorted(p.name for p in out.parent.iterdir()))


def test_a_rerun_killed_while_checking_a_finished_export_leaves_it_as_it_was(run, reference, tmp_path, capsys):
    unit = run / "seed-0" / "round-01"
    out = tmp_path / "out"
    assert main(["export", str(unit), "--out", str(out)]) == 0
    for point in ("after-mkdir:.out.*.tmp:1", "after-replace:ticketlab.json:1"):  # its scratch copy, empty / complete
        killed = killed_export(point, unit, out)
        assert killed.returncode == -9, (point, killed.stderr[-2000:])
        assert files_of(out) == files_of(reference), point
    assert main(["export", str(unit), "--out", str(out)]) == 0
    assert files_of(out) == files_of(reference) and no_temporaries(tmp_path)
    capsys.readouterr()
    err = refused(capsys, "export", str(run / "seed-0" / "round-00"), "--out", str(out))
    assert "already holds a different export" in err
    assert files_of(out) == files_of(reference) and no_temporaries(tmp_path)


# --- bench --out -------------------------------------------------------------------------------------
def test_bench_never_writes_over_what_is_not_a_bench_result(run, reference, tmp_path, capsys):
    """Refused before anything is timed: a file as --out, a bench.json or bench.png that is not ours,
    a directory inside a run; the export's own bench.png / bench.json are its to replace."""
    (tmp_path / "file").write_text("x")
    user = tmp_path / "user"
    user.mkdir()
    (user / "bench.json").write_text('{"mine": 1}\n')
    art = tmp_path / "art"
    art.mkdir()
    (art / "bench.png").write_text("my drawing")
    quick = ["bench", str(reference), "--batch-sizes", "1", "--repeats", "3", "--no-memory"]
    for out, fragment in ((tmp_path / "file", "is a file"), (user, "not a bench result"),
                          (art, "not a PNG file"), (run / "seed-0", "inside the ticketlab directory")):
        root = run if run in out.parents else tmp_path
        before = snapshot(root)
        assert fragment in refused(capsys, *quick, "--out", str(out))
        assert snapshot(root) == before
    copy = tmp_path / "export"
    shutil.copytree(reference, copy)
    for _ in range(2):      # its own files, written and then replaced
        assert main([*quick[:1], str(copy), *quick[2:]]) == 0
    assert (copy / "bench.png").read_bytes().startswith(PNG_SIGNATURE)
