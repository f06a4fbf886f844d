"""What a model costs on a target device and how regrowth fills one: storage formats and their exact bytes
(``storage``), files in those formats and the models read back from them (``packed``), ONNX files
(``onnx``), measured latency (``latency``), device profiles, a model's costs and the fit check with its
margins (``profiles``), and regrowth up to a device's limit, by the limit a granularity fills (``fill``). MACs
are counted in ``utils.sparsity.macs`` only.

May import: ``utils.core``, ``utils.sparsity``, ``utils.results``, ``utils.runtime``, ``models``.
"""
