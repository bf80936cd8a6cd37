"""Structured sparsity: what one pruning decision removes, and which weights are coupled.

* `granularity` — the one vocabulary (unstructured, N:M, block:RxC, channel, head);
* `ticketlab.groups` (below this package, beside `ticketlab.select`) — families of groups and
  their arithmetic (group scores, alive groups, exact weight counts), used by the one selection
  routine, `ticketlab.select.select_groups`;
* `graph` — the torch.fx dependency graph of a vision model: which rows, columns, biases and
  BatchNorm entries belong to one channel (through residual additions, concatenation, flatten),
  used both to define channel groups before pruning and to remove them after
  (`ticketlab.deploy.compact`);
* `layouts` — the `GroupLayout` of a model at a granularity.

Import from the submodules.
"""
