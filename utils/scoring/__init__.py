"""Which units and entries matter: SSIM between dense and sparse feature maps (``ssim``), the saliency
``(dL/dθ)² θ²`` with its cache (``saliency``), the two layer scores a regrowth stage needs (``layer_scores``),
and the within-unit selectors that pick which masked entries regrow first (``selection``).

May import: ``utils.core``, ``utils.sparsity``, ``utils.results``, ``utils.runtime``, ``utils.device``,
``models``, ``data``.
"""
