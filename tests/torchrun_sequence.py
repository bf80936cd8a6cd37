"""Run several ``ticketlab`` commands one after another in each rank of one torchrun job.

Starting a torchrun job costs about 10 s on 2 cores (an agent and two ranks, each importing torch,
then a rendezvous); the tests that compare ranks run a few commands each, so they share one job:
``python -m torch.distributed.run ... torchrun_sequence.py PLAN.json``, where the plan is a JSON
list of argv lists. Each rank runs every command in order in the same process group (ticketlab
uses an existing group as it is) and writes the exit codes to ``PLAN.json.rank-R`` as JSON; the
job exits 0 so that a command refused on purpose is checked by the test, not by torchrun.
"""

from __future__ import annotations

import json
import os
import sys

from ticketlab.cli import main

if __name__ == "__main__":
    plan = sys.argv[1]
    with open(plan) as handle:
        commands = json.load(handle)
    codes = [main(list(argv)) for argv in commands]
    with open(f"{plan}.rank-{os.environ.get('RANK', '0')}", "w") as handle:
        json.dump(codes, handle)
