"""What the stages wrote, read back and shown: records read from run folders with the one regrowth summary
schema (``records``), ``report.py``'s tables over seeds (``tables``), every figure (``plots``, drawn from CSV
files, never inside a training loop) and the boundary estimators of an accuracy-vs-sparsity curve
(``boundary``).

May import: ``utils.core``, ``utils.sparsity`` (the granularities' folder names). No torch training here.
"""
