"""Crafted files in run, export and model directories (issue 18): each is refused by the command
that reads it with one sentence naming the file and exit code 2 — never a traceback, never an
allocation beyond the file's own size (checked under a lowered address-space limit), never a hang
(FIFOs are guarded by a watchdog that unblocks them and fails the test)."""

from __future__ import annotations

import contextlib
import json
import lzma
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from llm_assets import llm_assets  # noqa: F401  (session fixture)

from ticketlab.cli import main
from ticketlab.errors import TicketlabError
from ticketlab.files import MAX_JSON_DEPTH, METADATA_KEY, parse_json

#: Seconds a command may take on a FIFO before the watchdog unblocks it and the test fails.
HANG_SECONDS = 30
#: Address space a guarded command may add: far below what any crafted size would need.
MEMORY_HEADROOM = 2 << 30


# --- fixtures: one tiny run, its export, and Hugging Face directories ------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("crafted") / "run"
    assert main(["imp", "--data", "digits", "--steps", "10it", "--rounds", "2", "--seeds", "2", "--controls",
                 "reinit", "--quiet", "--threads", "1", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("crafted-export") / "ticket"
    assert main(["export", str(run / "seed-0" / "round-02"), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def hf_exported(llm_assets, tmp_path_factory) -> Path:
    """An unpruned tiny LLaMA written as a compact export (what `ticketlab export` writes for a pruned one)."""
    from ticketlab.deploy.package import write_package
    from ticketlab.deploy.sources import Source
    from ticketlab.files import read_safetensors

    model = llm_assets.llama_dir
    files = [p.name for p in sorted(model.iterdir()) if p.name != "model.safetensors"]
    source = Source("hf", model, read_safetensors(model / "model.safetensors")[0],
                    {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "tiny llama", files)
    out = tmp_path_factory.mktemp("crafted-hf") / "llama"
    write_package(source, out)
    return out


@pytest.fixture(scope="module")
def lzma_bomb() -> bytes:
    """An LZMA stream of 39 KiB that inflates to a 256 MiB mask: 2**31 positions, 8 GiB as float32."""
    return lzma.compress(bytes(256 << 20), preset=0)


def _copy(source: Path, tmp: Path, name: str | None = None) -> Path:
    target = tmp / (name or source.name)
    shutil.copytree(source, target, symlinks=True)
    return target


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))  # allow_nan: NaN and Infinity are written as bare constants


def _fifo(path: Path) -> Path:
    path.unlink()
    os.mkfifo(path)
    return path


def _outside_link(path: Path, tmp: Path) -> None:
    """Move ``path`` out of its directory and leave a symbolic link to it in its place."""
    (tmp / "elsewhere").mkdir(exist_ok=True)
    target = tmp / "elsewhere" / path.name
    shutil.move(path, target)
    path.symlink_to(target)


# --- guards: no hang, no large allocation -----------------------------------------------------------
#: The watchdog process: after ``seconds``, note the hang in ``marker`` and keep opening every FIFO
#: for writing (and closing it), so that a reader blocked in open() or read() sees end of file.
_WATCHDOG = """
import os, sys, time
seconds, marker, fifos = float(sys.argv[1]), sys.argv[2], sys.argv[3:]
time.sleep(seconds)
open(marker, "w").close()
while True:
    for fifo in fifos:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    time.sleep(0.2)
"""


@contextlib.contextmanager
def unblocked_fifos(fifos: list[Path], marker: Path) -> Iterator[None]:
    """Run the block under a watchdog: a separate process, since a reader blocked inside native
    code (safetensors opening a FIFO) may hold the GIL, so no thread of ours could run. If the
    block is still running after `HANG_SECONDS`, the watchdog creates ``marker`` and unblocks it."""
    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(HANG_SECONDS), str(marker),
                                 *map(str, fifos)])
    try:
        yield
    finally:
        watchdog.kill()
        watchdog.wait()


def _address_space() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize in /proc/self/status")  # pragma: no cover


@contextlib.contextmanager
def bounded_memory(headroom: int = MEMORY_HEADROOM) -> Iterator[None]:
    """Lower the soft address-space limit to what the process uses now plus ``headroom`` for the
    block: any allocation of a crafted size fails inside it (and shows as an unexpected error)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _address_space() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (min(limit, hard) if hard != resource.RLIM_INFINITY else limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# --- the crafted files ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """A crafted file: ``craft(directory, tmp)`` damages a copy of the ``base`` fixture's directory
    and returns (argv, the file the sentence must name); ``guard`` is "fifo", "memory" or None."""

    name: str
    base: str
    craft: Callable[[Path, Path], tuple[list[str], Path]]
    fragment: str
    guard: str | None = None


def _report(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda run, tmp: ["report", str(run), *extra, "--png", str(tmp / "out.png")]


def _summary_case(edit: Callable[[dict], None], *extra: str) -> Callable[[Path, Path], tuple[list[str], Path]]:
    def craft(run: Path, tmp: Path) -> tuple[list[str], Path]:
        _edit_json(run / "summary.json", edit)
        return _report(*extra)(run, tmp), run / "summary.json"
    return craft


def _deep_summary(run: Path, tmp: Path) -> tuple[list[str], Path]:
    (run / "summary.json").write_text("[" * 100_000 + "]" * 100_000)
    return _report()(run, tmp), run / "summary.json"


def _fifo_summary(*extra: str, overlay: bool = False) -> Callable[[Path, Path], tuple[list[str], Path]]:
    def craft(run: Path, tmp: Path) -> tuple[list[str], Path]:
        fifo = _fifo(run / "summary.json")
        argv = _report(*extra)(run, tmp)
        return (argv[:2] + [str(run)] + argv[2:] if overlay else argv), fifo
    return craft


def _fifo_mask(run: Path, tmp: Path) -> tuple[list[str], Path]:
    return _report("--at-kept", "5000")(run, tmp), _fifo(run / "seed-0" / "round-00" / "mask.safetensors")


def _linked_summary(run: Path, tmp: Path) -> tuple[list[str], Path]:
    _outside_link(run / "summary.json", tmp)
    return _report()(run, tmp), run / "summary.json"


def _set_seed_record(field: str | None, value) -> Callable[[dict], None]:
    def edit(summary: dict) -> None:
        records = summary["rounds"][1]["seeds"]
        if field is None:
            records["0"] = value
        else:
            records["0"][field] = value
    return edit


def _model_json_case(**fields) -> Callable[[Path, Path], tuple[list[str], Path]]:
    def craft(run: Path, tmp: Path) -> tuple[list[str], Path]:
        _edit_json(run / "model.json", lambda spec: spec.update(fields))
        return ["export", str(run), "--round", "1", "--out", str(tmp / "x")], run / "model.json"
    return craft


def _bench(directory: Path, tmp: Path) -> list[str]:
    return ["bench", str(directory), "--repeats", "3", "--batch-sizes", "1", "--no-memory", "--out", str(tmp / "b")]


def _record_case(edit: Callable[[dict], None]) -> Callable[[Path, Path], tuple[list[str], Path]]:
    def craft(directory: Path, tmp: Path) -> tuple[list[str], Path]:
        _edit_json(directory / "ticketlab.json", edit)
        return _bench(directory, tmp), directory / "ticketlab.json"
    return craft


def _linked_weights(directory: Path, tmp: Path) -> tuple[list[str], Path]:
    _outside_link(directory / "weights.safetensors", tmp)
    return _bench(directory, tmp), directory / "weights.safetensors"


def _lzma_weights(bomb: bytes) -> Callable[[Path, Path], tuple[list[str], Path]]:
    """Replace one tensor of the compact weights by a bitmask-lzma part declaring 2**31 float32
    positions (8 GiB), its checksum recomputed so that only its declared size is wrong."""
    def craft(directory: Path, tmp: Path) -> tuple[list[str], Path]:
        from safetensors.torch import save_file

        from ticketlab.deploy.format import _digest
        from ticketlab.files import read_safetensors

        path = directory / "weights.safetensors"
        tensors, table = read_safetensors(path)
        name = next(n for n, info in table["tensors"].items() if len(info["shape"]) == 2)
        for key in [k for k in tensors if k.startswith(f"{name}::")]:
            del tensors[key]
        parts = {"mask": torch.frombuffer(bytearray(bomb), dtype=torch.uint8), "values": torch.zeros(0)}
        tensors.update({f"{name}::{part}": t for part, t in parts.items()})
        table["tensors"][name] = {"encoding": "bitmask-lzma", "shape": [2**31], "dtype": "float32",
                                  "nbytes": len(bomb), "sha256": _digest(parts)}
        save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(table)})
        return _bench(directory, tmp), path
    return craft


def _hf_config_case(**fields) -> Callable[[Path, Path], tuple[list[str], Path]]:
    """A Hugging Face model directory whose config.json declares sizes far beyond its weights."""
    def craft(model: Path, tmp: Path) -> tuple[list[str], Path]:
        _edit_json(model / "config.json", lambda config: config.update(fields))
        text = tmp / "words.txt"
        text.write_text("Ka lo mi ten ra su vel do.\n" * 40)
        return ["llm", "eval", "--model", str(model), "--eval-text", str(text), "--seqlen", "16",
                "--max-windows", "1"], model / "config.json"
    return craft


def _hf_export_config(**fields) -> Callable[[Path, Path], tuple[list[str], Path]]:
    def craft(directory: Path, tmp: Path) -> tuple[list[str], Path]:
        _edit_json(directory / "config.json", lambda config: config.update(fields))
        return _bench(directory, tmp), directory / "config.json"
    return craft


def _fifo_in_model_dir(model: Path, tmp: Path) -> tuple[list[str], Path]:
    argv, _ = _hf_config_case()(model, tmp)
    return argv, _fifo(model / "tokenizer_config.json")


CASES = [
    # JSON nested 100,000 deep: a RecursionError before
    Case("summary nested 100,000 deep", "run", _deep_summary, f"nested deeper than {MAX_JSON_DEPTH}"),
    # summary.json that is a FIFO: report, --at-kept and overlays hung forever; a mask file too
    Case("summary.json a FIFO (report)", "run", _fifo_summary(), "FIFO", "fifo"),
    Case("summary.json a FIFO (--at-kept)", "run", _fifo_summary("--at-kept", "5000"), "FIFO", "fifo"),
    Case("summary.json a FIFO (overlay)", "run", _fifo_summary(overlay=True), "FIFO", "fifo"),
    Case("mask file a FIFO (--at-kept)", "run", _fifo_mask, "FIFO", "fifo"),
    Case("model directory file a FIFO", "llama", _fifo_in_model_dir, "FIFO", "fifo"),
    # a symbolic link whose target lies outside the run / export directory
    Case("summary.json links outside the run", "run", _linked_summary, "outside"),
    Case("weights link outside the export", "exported", _linked_weights, "outside"),
    # fields of the wrong type, NaN, Infinity, negative sizes
    Case("dense_reference a list ('list' has no get)", "run",
         _summary_case(lambda s: s.update(dense_reference=["round 0"])), "'dense_reference'"),
    Case("seed record density a string (> between int and str)", "run",
         _summary_case(_set_seed_record("density", "0.5"), "--at-kept", "5000"), "'density' of seed record '0'"),
    Case("seed record a string (string indices)", "run",
         _summary_case(_set_seed_record(None, "x"), "--at-kept", "5000"), "seed record '0'"),
    Case("Infinity in a seed record (float numerator)", "run",
         _summary_case(_set_seed_record("test_accuracy", float("inf")), "--at-kept", "5000"), "Infinity"),
    Case("NaN in a round's density", "run",
         _summary_case(lambda s: s["rounds"][1].update(density=float("nan")), ), "NaN"),
    Case("ticketlab.json without sizes (KeyError)", "exported",
         _record_case(lambda r: r.pop("sizes")), "no field 'sizes'"),
    Case("ticketlab.json with a negative size", "exported",
         _record_case(lambda r: r["sizes"].update(dense_file=-5)), "'dense_file' of 'sizes'"),
    # declared sizes far beyond the bytes present
    Case("model.json num_classes 1e12", "run", _model_json_case(num_classes=10**12), "classes", "memory"),
    Case("model.json input_shape 1e12", "run", _model_json_case(input_shape=[1, 2**20, 2**20]), "an input", "memory"),
    Case("model.json input_shape 1e30", "run", _model_json_case(input_shape=[1e30]), "'input_shape'", "memory"),
    Case("model.json width x64", "run", _model_json_case(width=64), "declares a network", "memory"),
    Case("ticketlab.json num_classes 1e12", "exported",
         _record_case(lambda r: r["spec"].update(num_classes=10**12)), "classes", "memory"),
    Case("ticketlab.json input_shape 1e12", "exported",
         _record_case(lambda r: r["spec"].update(input_shape=[1, 2**20, 2**20])), "an input", "memory"),
    Case("LZMA part declaring 8 GiB", "exported", None, "declares tensors of 8", "memory"),  # craft: lzma_bomb
    Case("HF config hidden_size 1e6", "llama", _hf_config_case(hidden_size=10**6, head_dim=250_000),
         "declares a model of", "memory"),
    Case("HF config vocabulary of 2.5e11", "llama", _hf_config_case(vocab_size=250_000_000_000),
         "declares a model of", "memory"),
    Case("HF export config hidden_size 1e6", "hf_exported", _hf_export_config(hidden_size=10**6, head_dim=250_000),
         "declares a model of", "memory"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_crafted_file_is_one_sentence_naming_it(case, request, tmp_path, capsys):
    if case.base == "llama":
        base = request.getfixturevalue("llm_assets").llama_dir
    else:
        base = request.getfixturevalue(case.base)
    craft = case.craft or _lzma_weights(request.getfixturevalue("lzma_bomb"))
    argv, named = craft(_copy(base, tmp_path / "given"), tmp_path)
    capsys.readouterr()
    marker = tmp_path / "hung"
    with contextlib.ExitStack() as stack:
        if case.guard == "fifo":
            stack.enter_context(unblocked_fifos([named], marker))
        if case.guard == "memory":
            stack.enter_context(bounded_memory())
        code = main(argv)
    assert not marker.exists(), f"the command blocked on {named} for {HANG_SECONDS}s"
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("note: ")]  # bench's kernel note
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("ticketlab: error: ") and "Traceback" not in err, err
    assert str(named) in lines[0] and case.fragment in lines[0], err


# --- the mechanisms themselves ----------------------------------------------------------------------
@pytest.mark.parametrize("text, finite, fragment", [
    ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), False, "nested deeper"),
    ('{"a": NaN}', True, "NaN"),
    ('{"a": -Infinity}', True, "-Infinity"),
    ('{"a": 1e999}', True, "out of range"),
    ('{"a": ' + "9" * 5000 + "}", False, "as JSON"),
])
def test_parse_json_refuses_what_ticketlab_never_writes(text, finite, fragment):
    with pytest.raises(TicketlabError, match=fragment):
        parse_json(text, "'x.json'", finite=finite)


@pytest.mark.parametrize("text", [
    "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH,          # exactly the limit
    json.dumps({"s": "[" * 1000 + "{" * 1000}),           # brackets inside strings do not nest
    json.dumps({"s": 'a \\" [[[[ " ' * 50}),              # nor after escaped quotes
])
def test_parse_json_accepts_deep_enough_and_bracketed_strings(text):
    assert parse_json(text, "'x.json'", finite=True) == json.loads(text)


def test_a_vision_load_allocates_only_the_weights(exported):
    """`load` assigns the decoded weights into a network laid out on the meta device: the
    parameters are trainable tensors on the CPU, none left on the meta device."""
    from ticketlab.deploy import load

    model = load(exported, sparse=False)
    tensors = [*model.parameters(), *model.buffers()]
    assert tensors and not any(t.is_meta for t in tensors)
    assert all(p.requires_grad for p in model.parameters())
