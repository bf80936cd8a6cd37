"""`Experiment`: a validated config bound to its run directory, its data and its device.

IMP, pruning at init / dynamic sparse training and the comparison share this shell. `prepare`
loads the data, lets the subclass check everything that can fail *before* the run directory is
touched (`check`, then `preflight` for work whose result can refuse the run, such as a mask
that collapses a layer), and only then claims the directory: a refused run leaves ``out`` as it
was. The claim holds the directory's lock; `run` does the subclass's `execute` under it and
releases it at the end, so no second process can write into a running experiment.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import DataSplits, load_dataset
from ..data.augment import check_augment_fits
from ..models import create_model
from ..errors import TicketlabError
from ..files import write_json
from ..groups import GroupLayout
from ..structure.granularity import Granularity
from ..structure.layouts import group_layout
from ..targets import prunable_parameters
from ..progress import metrics_listener
from ..train.distributed import is_distributed
from ..runs import MetricsLog, RunLock, check_run_directory
from ..threads import step_macs, use_threads
from .group import StackSetting, UnitJob, train_units
from .workers import Part, WorkerSetting, check_reachable, check_worker_count, run_parts, split_seeds
from .unit import ProgressFactory, claim_for_process


#: The file in a run directory that names its model and the data's shapes.
MODEL_SPEC = "model.json"


def layout_for(config: Any, data: DataSplits, model: nn.Module) -> GroupLayout | None:
    """The `GroupLayout` of ``model`` (built for ``data``) at ``config.granularity`` over its prunable
    parameters (minus ``config.ignore``); None for single weights and N:M. Channels trace the model
    on a zero batch of the data's input shape."""
    granularity = Granularity.parse(getattr(config, "granularity", None))
    if not granularity.grouped:
        return None
    names = list(prunable_parameters(model, ignore=getattr(config, "ignore", ())))
    example = torch.zeros(2, *data.input_shape)
    return group_layout(model, granularity, names, example)


@dataclass
class Experiment:
    """A config (with ``model``, ``data``, ``data_dir``, ``val_fraction``, ``split_seed`` and
    ``to_json``) bound to a claimed run directory ``out``.

    ``preflight_result`` holds what `preflight` computed before the claim (None by default), and
    ``lock`` the run lock while this process holds the directory. ``stack`` says how many networks
    train together (`train_units`); like ``device`` it is how the run executes, not what it
    computes, so it is not part of ``config.json`` and may change when a run is resumed.
    """

    config: Any
    out: Path
    data: DataSplits
    device: torch.device
    progress: ProgressFactory | None = None
    preflight_result: Any = None
    lock: RunLock | None = None
    stack: StackSetting = StackSetting()
    workers: WorkerSetting = WorkerSetting()
    threads: int = 0   # torch's CPU threads while this run trains (0: not set by `prepare`)

    @classmethod
    def kind_of(cls, config: Any) -> str:
        """The ``kind`` stored in ``config.json`` (e.g. ``imp``)."""
        raise NotImplementedError

    @classmethod
    def probe(cls, config: Any, data: DataSplits) -> nn.Module:
        """The seed-0 network of ``config`` for this data, built once by `prepare` for `check` and
        `set_threads` (building it is the first check: the model must take this data)."""
        return create_model(config.model, data.input_shape, data.num_classes, seed=0,
                            width=getattr(config, "width", 1.0))

    @classmethod
    def check(cls, config: Any, data: DataSplits, model: nn.Module) -> None:
        """Raise `TicketlabError` for anything wrong before ``out`` is touched; ``model`` is the
        `probe` (default: nothing beyond building it)."""

    @classmethod
    def preflight(cls, config: Any, data: DataSplits, out: Path, resuming: bool, device: torch.device) -> Any:
        """Work done before the claim whose outcome may refuse the run (default: none)."""
        return None

    #: Config fields (JSON keys) a finished run may grow in: lists that may gain entries, counts
    #: that may increase (`extends`); anything else must match to reuse a run directory.
    growing_lists: tuple[str, ...] = ("seeds",)
    growing_counts: tuple[str, ...] = ()
    #: Config keys that ``config.json`` leaves out until they matter (a flag left at its default,
    #: settings of a method not run yet): absent from the old run, they may appear in the new one.
    appearing_keys: tuple[str, ...] = ()

    @classmethod
    def extends(cls, old: dict[str, Any], new: dict[str, Any]) -> bool:
        """May the run of config ``old`` (its ``config.json``) be extended to ``new``? Only the
        `growing_lists` may gain entries (keeping every old one), the `growing_counts` grow, and
        the `appearing_keys` that ``old`` lacks appear; no key may disappear or change otherwise."""
        for key in set(old) | set(new):
            before, after = old.get(key), new.get(key)
            if before == after or (key in cls.appearing_keys and key not in old):
                continue
            if key in cls.growing_lists and isinstance(before, list) and isinstance(after, list):
                if not set(map(repr, before)) <= set(map(repr, after)):
                    return False
            elif key in cls.growing_counts and isinstance(before, int) and isinstance(after, int):
                if after < before:
                    return False
            else:
                return False
        return True

    @classmethod
    def prepare(cls, config: Any, out: str | Path, *, device: torch.device | str = "cpu",
                data: DataSplits | None = None, progress: ProgressFactory | None = None,
                stack: StackSetting | str | int = "auto", workers: WorkerSetting | None = None,
                threads: str | int | None = None):
        """Load the data (unless given), `check`, `preflight`, then claim ``out`` for this process.

        ``workers`` spreads the independent parts (`parts`) over processes or a cluster;
        ``threads`` sets torch's CPU threads (``"auto"``: chosen for the model's size,
        `ticketlab.threads`; None: left as they are). A directory holding a run this config
        `extends` is taken over: its finished units stay, the new ones train.
        """
        stack, workers = StackSetting.parse(stack), workers or WorkerSetting()
        if not workers.in_process and is_distributed():
            raise TicketlabError("--workers and --cluster cannot be combined with torchrun; use one or the other.")
        data = data or load_dataset(config.data, root=config.data_dir, val_fraction=config.val_fraction,
                                    split_seed=config.split_seed)
        probe = cls.probe(config, data)
        cls.check(config, data, probe)
        check_augment_fits(config.train.augment, data.input_shape, config.data)
        check_worker_count(workers, cls.independent_units(config), cls.unit_name)
        check_reachable(workers)
        used = cls.set_threads(config, data, threads, workers, probe)
        if threads is not None and not workers.in_process:   # each worker runs with the resolved count
            workers = dataclasses.replace(workers, threads=used)
        kind = cls.kind_of(config)
        resuming = check_run_directory(out, config.to_json(), kind=kind, extends=cls.extends)
        early = cls.preflight(config, data, Path(out), resuming, torch.device(device))
        claimed, lock = claim_for_process(out, config.to_json(), kind=kind, device=device, extends=cls.extends)
        return cls(config, Path(claimed), data, torch.device(device), progress, early, lock, stack, workers, used)

    @classmethod
    def set_threads(cls, config: Any, data: DataSplits, threads: str | int | None, workers: WorkerSetting,
                    model: nn.Module) -> int:
        """Apply ``threads`` (see `prepare`) for a training step of ``model`` (the `probe`); the
        thread count in use afterwards."""
        if threads is not None:
            use_threads(threads, step_macs(model, data.input_shape, config.train.batch_size),
                        workers=max(1, workers.workers))
        return torch.get_num_threads()

    @classmethod
    def attach(cls, config: Any, out: str | Path, *, device: torch.device | str = "cpu",
               stack: StackSetting | str | int = "auto") -> "Experiment":
        """Open a run that another process holds (a worker of `ticketlab.units.workers`): the
        directory must already hold this very configuration; nothing is claimed or checked twice."""
        if not check_run_directory(out, config.to_json(), kind=cls.kind_of(config)):
            raise TicketlabError(f"{str(out)!r} holds no run of this configuration for a worker to join; "
                                 "is the run directory on a filesystem every worker sees?")
        data = load_dataset(config.data, root=config.data_dir, val_fraction=config.val_fraction,
                            split_seed=config.split_seed)
        return cls(config, Path(out), data, torch.device(device), None, None, None, StackSetting.parse(stack))

    # --- parts --------------------------------------------------------------------------------
    #: What the independent parts of this kind of run are called in messages.
    unit_name = "seeds"

    @classmethod
    def independent_units(cls, config: Any) -> int:
        """How many parts of this run could run at once (default: its seeds)."""
        return len(config.seeds)

    def parts(self) -> list[Part]:
        """The run's seeds, as one part in a single process or one part per seed elsewhere, so that
        a single process stacks networks across seeds (`train_units`)."""
        pieces = 1 if self.workers.in_process else len(self.config.seeds)
        return [Part(type(self), self.config, str(self.out), seeds) for seeds in split_seeds(self.config.seeds, pieces)]

    def run_parts(self, parts: list[Part], local: dict[str, "Experiment"] | None = None) -> None:
        """Execute ``parts`` here or on the workers (`ticketlab.units.workers.run_parts`)."""
        run_parts(parts, self.workers, device=str(self.device), stack=self.stack, local=local or {str(self.out): self})

    def execute_seeds(self, seeds: tuple[int, ...]) -> None:
        """Train (or resume) the units of ``seeds`` (subclasses)."""
        raise NotImplementedError

    def run(self) -> Any:
        """Run or resume all the work while holding the run lock (re-taken if it was released)."""
        if self.lock is None or not self.lock.held:
            _, self.lock = claim_for_process(self.out, self.config.to_json(), kind=self.kind_of(self.config),
                                             device=self.device, extends=self.extends)
        try:
            self.write_model_spec()
            return self.execute()
        finally:
            self.release()

    def write_model_spec(self) -> None:
        """``OUT/model.json``: what rebuilds this run's networks without its data (`ticketlab export`)."""
        path = self.out / MODEL_SPEC
        spec = {"model": self.config.model, "data": self.config.data, "input_shape": list(self.data.input_shape),
                "num_classes": int(self.data.num_classes)}
        if getattr(self.config, "width", 1.0) != 1.0:
            spec["width"] = self.config.width
        if not path.exists():
            write_json(path, spec)

    def execute(self) -> Any:
        """Do the work this process must do first (`before_parts`), every part (`parts`, here or on
        the workers), then write and return the summary."""
        self.before_parts()
        self.run_parts(self.parts())
        return self.write_summary()

    def before_parts(self) -> None:
        """Work of the process holding the run before the parts start (default: none)."""

    def write_summary(self) -> Any:
        """Aggregate what is on disk into the run's summary, store it with
        `ticketlab.units.aggregate.write_summary_files` (``summary.json`` and ``summary.csv``, both
        atomic, side by side) and return it (subclasses)."""
        raise NotImplementedError

    def release(self) -> None:
        """Give up the run lock (idempotent)."""
        if self.lock is not None:
            self.lock.release()

    @property
    def metrics(self) -> MetricsLog:
        return MetricsLog(self.out / "metrics.jsonl", listener=metrics_listener(self.progress))

    def train_all(self, jobs: list[UnitJob]) -> list[dict[str, Any]]:
        """Train (or read back) independent units, stacked where that pays (`train_units`)."""
        return train_units(jobs, data=self.data, config=self.config.train, device=self.device,
                           metrics=self.metrics, stack=self.stack, progress=self.progress)

    def group_layout(self, model: nn.Module | None = None) -> GroupLayout | None:
        """The groups this experiment prunes whole (`ticketlab.structure.layouts.group_layout` at the
        config's ``granularity``; None for single weights and N:M), built once from ``model`` (default:
        the seed-0 network): the layout depends on the architecture only."""
        if not hasattr(self, "_layout"):
            self._layout = layout_for(self.config, self.data, model if model is not None else self.new_model(0))
        return self._layout

    def new_model(self, seed: int) -> nn.Module:
        """The registered model for this data, initialised from ``seed`` (θ0 of that seed)."""
        return create_model(self.config.model, self.data.input_shape, self.data.num_classes, seed=seed,
                            width=getattr(self.config, "width", 1.0))
