"""Regrowth decisions above the kernels: the greedy allocation rules that split a budget over units (``allocation``:
``fill``, ``prop``, ``uniform``, ``random``, and the per-unit log table of an allocation) and applying an allocation
(``apply``: regrow it into a model or a copy, finetune, evaluate), which the RL search, the greedy baselines, the
single-layer analysis and the benchmarks share. The weight and channel regrowth kernels themselves are in
``utils.sparsity.grow`` and ``utils.sparsity.grow_channels``.

May import: ``utils.core``, ``utils.results``, ``utils.sparsity``, ``utils.runtime``, ``utils.device``,
``utils.scoring``.
"""
