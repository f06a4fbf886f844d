"""Pruning at both granularities: the pruner registry (``pruners``), the unstructured selectors with their
per-layer budget rules (``weight_pruners``), the channel importances with exact-count selection
(``channel_pruners``), and the prune -> finetune -> save -> log stage loop shared by the pruning scripts
(``loop``).

May import: every package below it (``core``, ``sparsity``, ``results``, ``runtime``, ``device``, ``scoring``,
``regrow``), ``models``, ``data``.
"""
