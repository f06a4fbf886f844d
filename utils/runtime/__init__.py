"""How a stage runs: the typed settings the library reads (``settings``), the checkpoint format and its one
reader and writer (``checkpoint``), the original repository's checkpoints (``upstream``), the training loop,
evaluation and finetune (``train``), ``Stage``: device, model, data set and granularity of one run, loading
and saving models (``stage``), and the notebook API: any checkpoint as a ready model (``api``, re-exported by the
top-level ``bridge``).

May import: ``utils.core``, ``utils.sparsity``, ``utils.results``, ``models``, ``data``.
"""
