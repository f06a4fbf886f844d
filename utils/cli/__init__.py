"""The edge between the command line and the library: flag groups and value types (``flags``), the stage set-up
every script runs first (``prepare``: flags -> ``Stage``), and the regrowth scripts' flags turned into a job
(``jobs``: flags -> ``RegrowthSettings``). Each flag group is translated into its typed settings
(``utils.runtime.settings``) here and nowhere else; ``cli_main`` turns a ``UsageError`` into one ``error:`` line
and exit code 2.

May import: every other package of ``utils``, ``models``, ``data``. The only package that sees ``argparse``.
"""
