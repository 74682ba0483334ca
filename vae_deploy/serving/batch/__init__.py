"""Offline batch work past one machine: encode a data set, decode latents or draw samples,
sharded, exactly once and resumable, in this process or on a Ray cluster (one ``Runtime`` per
Ray actor). ``run_batch`` is the entry point; ``read_outputs`` reads a finished ``OUT``.

Ray is optional (``pip install 'vae-deploy[ray]'``) and imported only when a job runs on it.
"""

from __future__ import annotations

from vae_deploy.serving.batch.job import BatchSummary, Progress, run_batch
from vae_deploy.serving.batch.output import BatchError, read_outputs, recorded_shards
from vae_deploy.serving.batch.plan import Shard, plan_shards, shard_rng

__all__ = ["BatchError", "BatchSummary", "Progress", "Shard", "plan_shards", "read_outputs",
           "recorded_shards", "run_batch", "shard_rng"]
