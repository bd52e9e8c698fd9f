"""Thin LearnerService servicer: status, and weight streaming from published snapshots."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import torch

from rspo_proto.v1 import learner_pb2, learner_pb2_grpc
from services.common.errors import FailedPrecondition, NotFound
from services.common.grpc_server import rpc_errors, rpc_stream_errors
from services.common.weights import PolicySnapshot, stream_snapshot

if TYPE_CHECKING:
    from services.learner.worker import LearnerWorker


class SnapshotStore:
    """The last few published policy versions (a replica mid-fetch keeps its version)."""

    def __init__(self, keep: int = 2, dtype: torch.dtype | None = None) -> None:
        self.keep = keep
        self.dtype = dtype
        self._by_version: OrderedDict[int, PolicySnapshot] = OrderedDict()

    def publish(self, version: int, model: torch.nn.Module) -> None:
        self._by_version[version] = PolicySnapshot.capture(model, version, dtype=self.dtype)
        while len(self._by_version) > self.keep:
            self._by_version.popitem(last=False)

    def get(self, version: int) -> PolicySnapshot:
        if not self._by_version:
            raise FailedPrecondition("no policy version published yet; retry after the learner starts")
        if version == 0:
            return next(reversed(self._by_version.values()))
        snap = self._by_version.get(version)
        if snap is None:
            raise NotFound(
                f"policy version {version} is not held (have {list(self._by_version)}); fetch 0 for the latest"
            )
        return snap


class LearnerServicer(learner_pb2_grpc.LearnerServiceServicer):
    def __init__(self, worker: LearnerWorker, store: SnapshotStore, chunk_bytes: int) -> None:
        self.worker = worker
        self.store = store
        self.chunk_bytes = chunk_bytes

    @rpc_errors
    async def GetStatus(
        self, request: learner_pb2.LearnerStatusRequest, context: grpc.aio.ServicerContext
    ) -> learner_pb2.LearnerStatus:
        w = self.worker
        return learner_pb2.LearnerStatus(
            run_id=w.cfg.run.run_id,
            step=w.state.step,
            policy_version=w.state.policy_version,
            groups_applied=w.state.groups_applied,
            groups_dropped=w.state.groups_dropped,
            groups_admitted=w.admitted,
            total_steps=w.cfg.learner.total_steps,
            finished=w.finished.is_set(),
        )

    @rpc_stream_errors
    async def FetchWeights(
        self, request: learner_pb2.FetchWeightsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[learner_pb2.WeightChunk]:
        snapshot = self.store.get(request.version)
        async for chunk in stream_snapshot(snapshot, self.chunk_bytes):
            yield chunk
