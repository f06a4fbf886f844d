"""Level 0 of ``utils``: what every other package builds on. The one usage error (``errors``), the registry helper
(``registry``), atomic files, JSON / CSV and run-settings checks (``files``), logging (``log``), seeds and generators
(``seeds``), the ``torchrun`` world (``distributed``), every run-folder path (``paths``), the wall-clock timer
(``timer``) and Ctrl-C outside a stage's work (``interrupt``).

May import: nothing from ``utils`` (only the standard library, torch and numpy).
"""
