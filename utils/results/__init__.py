"""What the stages wrote, read back and shown: records read from run folders with the one regrowth summary
schema (``records``), ``report.py``'s tables over seeds (``tables``), every figure (``plots``, drawn from CSV
files, never inside a training loop), the boundary estimators of an accuracy-vs-sparsity curve
(``boundary``) and the generated figure blocks of the README and results pages (``figures``).

May import: ``utils.core``, ``utils.sparsity`` (the granularities' folder names), ``models`` (model names in
run folders). No torch training here.
"""
