"""Independent seeds in worker processes and on a local Dask cluster give the single-process
summary; bad worker settings are one sentence before anything is written."""

import json

import pytest

from ticketlab.cli import main
from ticketlab.errors import TicketlabError
from ticketlab.experiments.sparse import SparseConfig, run_sparse
from ticketlab.runs import FileLock
from ticketlab.train import TrainConfig
from ticketlab.units import WorkerSetting
from ticketlab.units.workers import split_seeds

TIMING = {"wall_time", "wall_time_std", "scoring_time", "scoring_time_std"}
ARGS = ["prune-init", "--data", "digits", "--method", "magnitude", "--density", "0.2", "--seeds", "2",
        "--controls", "shuffle", "--steps", "20it", "--quiet"]


def _without_timing(value):
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def _summary(out):
    return _without_timing(json.loads((out / "summary.json").read_text()))


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    assert main(ARGS + ["--out", str(out)]) == 0
    return out


def test_split_seeds_deals_round_robin():
    assert split_seeds((0, 1, 2, 3, 4), 2) == [(0, 2, 4), (1, 3)]
    assert split_seeds((5,), 3) == [(5,)]


def test_two_local_workers_equal_one_process(tmp_path, single_process):
    out = tmp_path / "run"
    assert main(ARGS + ["--workers", "2", "--out", str(out)]) == 0
    assert _summary(out) == _summary(single_process)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted({(r["seed"], r["run"]) for r in records}) == [(0, "dense"), (0, "shuffle"), (0, "ticket"),
                                                                (1, "dense"), (1, "shuffle"), (1, "ticket")]


def test_a_local_dask_cluster_with_two_workers_equals_one_process(tmp_path, single_process):
    distributed = pytest.importorskip("distributed")
    config = SparseConfig(kind="prune-init", method="magnitude", densities=(0.2,), data="digits", seeds=(0, 1),
                          controls=("shuffle",), dense=True, train=TrainConfig(steps="20it"))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        run_sparse(config, tmp_path / "run", workers=WorkerSetting(cluster=cluster.scheduler_address))
    assert _summary(tmp_path / "run") == _summary(single_process)


def test_a_part_lock_makes_racing_workers_take_turns(tmp_path):
    """The second holder waits for the first (the kernel's flock), then finds the work done."""
    import threading

    order = []
    with FileLock(tmp_path / ".part-seeds-0.lock"):
        waiter = threading.Thread(target=lambda: (FileLock(tmp_path / ".part-seeds-0.lock").__enter__(),
                                                  order.append("second")))
        waiter.start()
        waiter.join(0.3)
        order.append("first")
    waiter.join(5)
    assert order == ["first", "second"]


@pytest.mark.parametrize("extra, message", [
    (["--workers", "0"], "--workers"),
    (["--workers", "3"], "more than the 2 independent seeds"),
    (["--cluster", "tcp://127.0.0.1:9"], "Cannot reach the Dask scheduler"),
])
def test_bad_worker_settings_are_one_sentence_and_write_nothing(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.setattr("ticketlab.units.workers.CONNECT_TIMEOUT_S", 1)
    out = tmp_path / "run"
    assert main(ARGS + extra + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_worker_setting_validates_itself():
    with pytest.raises(TicketlabError):
        WorkerSetting(workers=-1)
    with pytest.raises(TicketlabError):
        WorkerSetting(cluster="  ")


def test_imp_seeds_on_two_workers_equal_one_process_bit_for_bit(tmp_path):
    """Alone, a process stacks both seeds' units together; each worker stacks only its own seed's.
    A network's bits do not depend on its group, so the summaries agree exactly."""
    args = ["imp", "--data", "digits", "--rounds", "1", "--seeds", "2", "--controls", "random", "--steps", "20it",
            "--quiet"]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    assert main(args + ["--workers", "2", "--out", str(tmp_path / "two")]) == 0
    assert _summary(tmp_path / "two") == _summary(tmp_path / "one")
    for seed in (0, 1):
        one = (tmp_path / "one" / f"seed-{seed}" / "round-01" / "weights.safetensors").read_bytes()
        assert (tmp_path / "two" / f"seed-{seed}" / "round-01" / "weights.safetensors").read_bytes() == one
