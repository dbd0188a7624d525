"""The Ray edges: session, Train stages, checkpoints, dashboard metrics.

- ``session``: ``init_ray`` (CLIs), ``stage_resources`` (in-process on a command's own Ray).
- ``device``: every device choice: ``resolve_use_gpu`` (GPU pools that autoscale from 0),
  the worker's device with its CPU fallback, the process-group backend.
- ``ingest``: how training rows reach the workers (held in memory or streamed per shard).
- ``stage``: the epoch loop both stages share (Ray-free), ``TrainingRows``.
- ``pretrain``: ``fit_pretrain`` -> ``PretrainResult`` (stage 1: MF / MF-MLP on Train, ALS task).
- ``ttnn``: ``build_ttnn_inputs``, ``fit_ttnn`` -> ``TTNNResult`` (stage 2 on Train).
- ``checkpoint``: self-describing ``state.pt`` files, ``weights_only=True`` loading.
- ``worker``: helpers the Train worker loops share (reading rows, epoch order, seeds, reports).
- ``metrics``: ``ray.util.metrics`` gauges for the dashboard.

Submodules import Ray lazily; importing this package starts nothing.
"""
