"""``--threads``: validated thread counts, a default that grows with the step size, and local
workers that divide the cores between them (checked inside a real worker process)."""

import json
import os
from pathlib import Path

import pytest
import torch

from ticketlab import threads
from ticketlab.errors import TicketlabError
from ticketlab.models import create_model
from ticketlab.user_code import trust_user_code
from ticketlab.threads import (STEP_MACS_PER_THREAD, default_threads, resolve_threads, set_threads, step_macs,
                               token_step_macs)
from ticketlab.units.workers import Part, WorkerSetting, run_parts

HIGH = 4 * (os.cpu_count() or 1)


@pytest.fixture
def restore_threads():
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


@pytest.mark.parametrize("bad", [0, -1, HIGH + 1, 1.5, True, "2", None])
def test_set_threads_refuses_anything_but_a_count_within_four_per_core(bad, restore_threads):
    with pytest.raises(TicketlabError, match=rf"--threads must be a whole number from 1 to {HIGH} "):
        set_threads(bad)


def test_set_threads_sets_torch(restore_threads):
    assert set_threads(1) == 1 and torch.get_num_threads() == 1
    assert set_threads(HIGH) == HIGH and torch.get_num_threads() == HIGH


def test_default_threads_golden_values():
    assert STEP_MACS_PER_THREAD == 2_000_000_000
    assert default_threads(0, cores=2) == 1
    assert default_threads(3_012_000, cores=16) == 1            # LeNet-300-100 on digits
    assert default_threads(163_600_000, cores=16) == 1          # Conv-2 on digits
    assert default_threads(2.45e9, cores=16) == 1               # ResNet-20 at batch 60
    assert default_threads(3_999_999_999, cores=16) == 1
    assert default_threads(4_000_000_000, cores=16) == 2
    assert default_threads(5.2e9, cores=16) == 2                # ResNet-20 at batch 128
    assert default_threads(40e9, cores=16) == 16                # VGG-16 on CIFAR-10: capped by the cores
    assert default_threads(40e9, cores=32) == 20
    assert default_threads(40e9, cores=1) == 1


@pytest.mark.parametrize("cores", [1, 2, 3, 16])
def test_default_threads_is_monotone_in_the_step_size(cores):
    sizes = [0, 1e3, 1e6, 3e6, 1.6e7, 9.9e7, 1e8, 1.6e8, 2.45e9, 1e12]
    counts = [default_threads(s, cores) for s in sizes]
    assert counts == sorted(counts) and counts[0] == 1 and counts[-1] == cores


@pytest.mark.parametrize("bad", [-1, float("nan"), "big"])
def test_default_threads_refuses_a_bad_step_size(bad):
    with pytest.raises(TicketlabError, match="MACs per training step"):
        default_threads(bad, cores=2)


def test_step_macs_of_lenet300_on_digits_by_hand():
    model = create_model("lenet300", (1, 8, 8), 10, seed=0)
    assert step_macs(model, (1, 8, 8), 60) == 60 * (64 * 300 + 300 * 100 + 100 * 10)  # 3,012,000


def test_token_step_macs_of_a_two_layer_lm_head_by_hand():
    model = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Linear(8, 16), torch.nn.Linear(16, 50))
    assert token_step_macs(model, 4 * 32) == 4 * 32 * (8 * 16 + 16 * 50)


def test_resolve_threads_auto_divides_the_cores_between_workers(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    big, small = 40e9, 3e6
    assert resolve_threads("auto", big) == 8
    assert resolve_threads("auto", 5.2e9) == 2
    assert resolve_threads("AUTO", big, workers=3) == 2      # 8 // 3
    assert resolve_threads("auto", big, workers=16) == 1     # never below one
    assert resolve_threads("auto", small, workers=1) == 1
    assert resolve_threads(3, small, workers=4) == 3         # a number is each process's count
    assert resolve_threads(" 4 ", big) == 4


@pytest.mark.parametrize("bad", ["x", "0", 0, True, "1.5", str(HIGH + 1)])
def test_resolve_threads_refuses_bad_values(bad):
    with pytest.raises(TicketlabError, match="--threads"):
        resolve_threads(bad, 1e6)


def test_a_worker_setting_refuses_a_bad_thread_count():
    with pytest.raises(TicketlabError, match="--threads"):
        WorkerSetting(workers=2, threads=0)


class ThreadProbe:
    """A stand-in experiment for a worker: writes the worker's torch threads and trusted user code."""

    def __init__(self, out):
        self.out = Path(out)

    @classmethod
    def attach(cls, config, out, *, device, stack):
        return cls(out)

    def execute_seeds(self, seeds):
        from ticketlab.user_code import trusted_user_code

        record = {"threads": torch.get_num_threads(), "pid": os.getpid(), "user_code": list(trusted_user_code())}
        (self.out / f"seed-{seeds[0]}.json").write_text(json.dumps(record))


def _run_probes(tmp_path, setting):
    parts = [Part(ThreadProbe, None, str(tmp_path), (seed,)) for seed in (0, 1)]
    run_parts(parts, setting, device="cpu", stack=None, local={})
    return [json.loads((tmp_path / f"seed-{s}.json").read_text()) for s in (0, 1)]


def test_each_worker_process_gets_its_share_of_the_cores(tmp_path, fresh_trust):
    trust_user_code("probe_models:tiny")
    records = _run_probes(tmp_path, WorkerSetting(workers=2))
    expected = max(1, threads.available_cores() // 2)
    assert all(r["pid"] != os.getpid() for r in records)
    assert [r["threads"] for r in records] == [expected, expected]
    assert all("probe_models:tiny" in r["user_code"] for r in records)  # the command line's trust travels


def test_an_explicit_thread_count_reaches_the_workers(tmp_path):
    records = _run_probes(tmp_path, WorkerSetting(workers=2, threads=3))
    assert [r["threads"] for r in records] == [3, 3]
