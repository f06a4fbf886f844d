"""What "sparse" means, at every granularity: the mask wrapper (``masks``), budget arithmetic (``budget``), the
weight/channel seam (``granularity``: the interface and registry; ``weights`` and ``channels``: the two
implementations, registered on import of this package), the regrowth kernels (``grow``, ``grow_channels``), the
physical export of channel masks (``physical``) and the one MAC counter (``macs``).

May import: ``utils.core``, ``models``. Nothing here knows about stages, flags, training or the search.
"""
from utils.sparsity import channels, weights  # noqa: F401  (register the two granularities)
