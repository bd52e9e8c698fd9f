"""Weight streaming: manifest, chunking, assembly, corruption detection, and a real gRPC round trip."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
import torch

from rspo_proto.v1 import learner_pb2, learner_pb2_grpc
from services.common.errors import DataCorruption, InvalidInput, NotFound
from services.common.weights import (
    PolicySnapshot,
    WeightAssembler,
    build_manifest,
    fetch_weights,
    iter_weight_chunks,
    stream_snapshot,
)


def _state(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "embed.weight": torch.randn(37, 16, generator=g).to(dtype),
        "layer.0.weight": torch.randn(16, 16, generator=g).to(dtype),
        "scalar": torch.tensor(3.5).to(dtype),
        "empty": torch.empty(0, 4, dtype=dtype),
        "norm.weight": torch.randn(16, generator=g).to(dtype),
    }


def _assemble(chunks: list[learner_pb2.WeightChunk]) -> dict[str, torch.Tensor]:
    asm = WeightAssembler()
    for c in chunks:
        asm.feed(c)
    return asm.finish()


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("chunk_bytes", [7, 64, 1 << 20])
def test_round_trip_in_process(dtype: torch.dtype, chunk_bytes: int) -> None:
    state = _state(dtype)
    chunks = list(iter_weight_chunks(state, 5, chunk_bytes))
    assert chunks[0].HasField("manifest") and not any(c.HasField("manifest") for c in chunks[1:])
    assert all(len(c.data) <= chunk_bytes for c in chunks)
    total = chunks[0].manifest.total_bytes
    assert len(chunks) == -(-total // chunk_bytes)  # small tensors share messages: ceil(total / chunk)
    _assert_same(_assemble(chunks), state)


def test_manifest_hash_is_over_raw_bytes_in_order() -> None:
    state = _state(torch.bfloat16)
    manifest = build_manifest(state, 3)
    raw = b"".join(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() for t in state.values())
    assert manifest.sha256 == hashlib.sha256(raw).hexdigest()
    assert manifest.total_bytes == len(raw)
    assert [s.name for s in manifest.tensors] == list(state)
    assert manifest.tensors[0].dtype == "bfloat16" and list(manifest.tensors[0].shape) == [37, 16]


def test_non_contiguous_tensor_is_sent_in_logical_order() -> None:
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()  # transposed view: not contiguous
    out = _assemble(list(iter_weight_chunks({"t": t}, 1, 5)))
    assert torch.equal(out["t"], t)


def test_flipped_byte_is_detected() -> None:
    chunks = list(iter_weight_chunks(_state(torch.float32), 1, 64))
    bad = learner_pb2.WeightChunk()
    bad.CopyFrom(chunks[3])
    data = bytearray(bad.data)
    data[0] ^= 0x01
    bad.data = bytes(data)
    chunks[3] = bad
    with pytest.raises(DataCorruption, match="sha256"):
        _assemble(chunks)


def test_dropped_chunk_is_detected() -> None:
    chunks = list(iter_weight_chunks(_state(torch.float32), 1, 64))
    with pytest.raises(DataCorruption, match="lost chunk"):
        _assemble(chunks[:2] + chunks[3:])


def test_truncated_stream_is_detected() -> None:
    chunks = list(iter_weight_chunks(_state(torch.float32), 1, 64))
    with pytest.raises(DataCorruption, match="truncated"):
        _assemble(chunks[:-1])


def test_stream_without_manifest_is_rejected() -> None:
    chunks = list(iter_weight_chunks(_state(torch.float32), 1, 64))
    with pytest.raises(DataCorruption, match="manifest"):
        _assemble(chunks[1:])
    with pytest.raises(DataCorruption, match="empty"):
        WeightAssembler().finish()


def test_unknown_dtype_is_invalid_input() -> None:
    chunks = list(iter_weight_chunks(_state(torch.float32), 1, 1 << 20))
    chunks[0].manifest.tensors[0].dtype = "float128"
    with pytest.raises(InvalidInput, match="float128"):
        _assemble(chunks)


def test_declared_size_mismatch_is_corruption() -> None:
    chunks = list(iter_weight_chunks(_state(torch.float32), 1, 1 << 20))
    chunks[0].manifest.tensors[1].nbytes += 4
    with pytest.raises(DataCorruption, match="declares"):
        _assemble(chunks)


def test_snapshot_is_isolated_from_later_updates_and_dedupes_tied() -> None:
    lin = torch.nn.Linear(4, 4, bias=False)
    emb = torch.nn.Embedding(4, 4)
    model = torch.nn.ModuleDict({"emb": emb, "head": lin})
    lin.weight = emb.weight  # tied
    snap = PolicySnapshot.capture(model, 2)
    assert list(snap.tensors) == ["emb.weight"]  # the tied alias is sent once
    before = snap.tensors["emb.weight"].clone()
    with torch.no_grad():
        emb.weight.add_(1.0)  # the optimizer's in-place step
    assert torch.equal(snap.tensors["emb.weight"], before)
    bf = PolicySnapshot.capture(model, 3, dtype=torch.bfloat16)
    assert bf.tensors["emb.weight"].dtype == torch.bfloat16


# ---- real gRPC: a minimal LearnerService serving FetchWeights from a PolicySnapshot ---------------


class _Learner(learner_pb2_grpc.LearnerServiceServicer):
    def __init__(self, snapshot: PolicySnapshot, chunk_bytes: int, mutate: Callable[[int, bytes], bytes] | None = None):
        self.snapshot = snapshot
        self.chunk_bytes = chunk_bytes
        self.mutate = mutate  # test hook: damage chunk i on the wire

    async def FetchWeights(
        self, request: learner_pb2.FetchWeightsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[learner_pb2.WeightChunk]:
        if request.version not in (0, self.snapshot.version):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"version {request.version} not published")
        i = 0
        async for chunk in stream_snapshot(self.snapshot, self.chunk_bytes):
            if self.mutate is not None:
                data = self.mutate(i, chunk.data)
                if data == b"DROP":
                    i += 1
                    continue
                chunk.data = data
            i += 1
            yield chunk


async def _serve_and_fetch(
    snapshot: PolicySnapshot,
    version: int,
    chunk_bytes: int,
    mutate: Callable[[int, bytes], bytes] | None = None,
) -> tuple[int, dict[str, torch.Tensor]]:
    server = grpc.aio.server()
    learner_pb2_grpc.add_LearnerServiceServicer_to_server(_Learner(snapshot, chunk_bytes, mutate), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", chunk_bytes + (1 << 20))]
        ) as channel:
            return await fetch_weights(channel, version, timeout_s=30)
    finally:
        await server.stop(grace=None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grpc_round_trip(dtype: torch.dtype) -> None:
    state = _state(dtype)
    snap = PolicySnapshot(7, state)
    version, got = asyncio.run(_serve_and_fetch(snap, 0, 100))
    assert version == 7
    _assert_same(got, state)
    version, got = asyncio.run(_serve_and_fetch(snap, 7, 1 << 16))
    assert version == 7
    _assert_same(got, state)


def test_grpc_errors_map_to_taxonomy() -> None:
    snap = PolicySnapshot(7, _state(torch.float32))
    with pytest.raises(NotFound):
        asyncio.run(_serve_and_fetch(snap, 3, 100))


def test_grpc_corruption_on_the_wire() -> None:
    snap = PolicySnapshot(1, _state(torch.bfloat16))

    def flip(i: int, data: bytes) -> bytes:
        return bytes([data[0] ^ 0x80]) + data[1:] if i == 4 else data

    def drop(i: int, data: bytes) -> bytes:
        return b"DROP" if i == 4 else data

    with pytest.raises(DataCorruption, match="sha256"):
        asyncio.run(_serve_and_fetch(snap, 0, 64, flip))
    with pytest.raises(DataCorruption, match="lost chunk"):
        asyncio.run(_serve_and_fetch(snap, 0, 64, drop))
