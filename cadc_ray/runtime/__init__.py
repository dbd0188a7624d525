"""The Ray edges: session, Train stages, checkpoints, dashboard metrics.

- ``session``: ``init_ray`` (CLIs), ``resolve_use_gpu``.
- ``pretrain``: ``fit_pretrain`` -> ``PretrainResult`` (stage 1: MF / MF-MLP on Train, ALS task).
- ``ttnn``: ``build_ttnn_inputs``, ``fit_ttnn`` -> ``TTNNResult`` (stage 2 on Train).
- ``checkpoint``: self-describing ``state.pt`` files, ``weights_only=True`` loading.
- ``worker``: helpers the Train worker loops share (data pull, epoch order, seeds, reports).
- ``metrics``: ``ray.util.metrics`` gauges for the dashboard.

Submodules import Ray lazily; importing this package starts nothing.
"""
