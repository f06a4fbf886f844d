"""The RL allocation of a regrowth budget: the LSTM controller and REINFORCE (``controller``), the episode loop
with its search space, budget and reward (``episodes``), the one-shot and iterative stage drivers for both
granularities (``drivers``), and the pruning-baseline zero point of the iterative search (``baseline``).

May import: every package below it, ``models``, ``data``; never ``utils.cli``.
"""
