"""Weight streaming for policy versions: learner snapshot -> gRPC chunks -> rollout tensors.

Wire format (`rspo.v1.WeightChunk`, server-streaming `LearnerService.FetchWeights`): the first
message carries a `WeightManifest` (every tensor's name, dtype, shape and byte size in order, the
total size and a SHA-256 over all raw bytes in manifest order); then each tensor's raw C-contiguous
bytes follow in order, in chunks of at most `chunk_bytes`, each tagged with the tensor index and byte
offset where it starts (a chunk may run on into the next tensors, so small tensors share messages).
Raw bytes, not safetensors or pickle: the receiver writes them straight into preallocated tensors
through a uint8 view, so bfloat16 (which numpy cannot represent) works and nothing is parsed or
re-encoded.

Copies: the sender reinterprets each tensor as uint8 in place (no copy); protobuf needs `bytes`, so
each chunk's payload is one copy of its slices. The receiver copies each payload once into the final
tensor's memory. The SHA-256 is computed once per published version (`PolicySnapshot.manifest`).

Delivery: a stream either assembles completely and verifiably or `WeightAssembler.finish` raises
`DataCorruption` (retryable: fetch again). What this module does not know: which version is current
(the learner publishes that in Redis) or how a backend loads the tensors.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator, Mapping
from functools import cached_property
from types import MappingProxyType
from typing import Any

import grpc
import numpy as np
import torch

from rspo_proto.v1 import learner_pb2, learner_pb2_grpc
from services.common import errors
from services.common.errors import DataCorruption, InvalidInput, PayloadTooLarge

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
DEFAULT_CHUNK_BYTES = 4 << 20


def dtype_name(dtype: torch.dtype) -> str:
    """'torch.bfloat16' -> 'bfloat16' (the manifest's spelling); InvalidInput if not streamable."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise InvalidInput(f"dtype {dtype} cannot be streamed; supported: {', '.join(DTYPES)}")
    return name


def _cpu_contiguous(tensor: torch.Tensor) -> torch.Tensor:
    # No-ops (no copy) for a tensor that is already a contiguous CPU tensor, the snapshot case.
    return tensor.detach().to("cpu").contiguous()


def raw_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's raw bytes as a zero-copy memoryview (CPU contiguous tensors; others are copied)."""
    flat = _cpu_contiguous(tensor).reshape(-1).view(torch.uint8)  # reinterpret, no copy; bf16 works
    array: Any = flat.numpy()  # numpy's stubs do not declare the buffer protocol
    return memoryview(array)


def build_manifest(state: Mapping[str, torch.Tensor], version: int) -> learner_pb2.WeightManifest:
    """Manifest of `state` in its iteration order, with SHA-256 over all raw bytes in that order."""
    sha = hashlib.sha256()
    specs = []
    total = 0
    for name, tensor in state.items():
        data = raw_bytes(tensor)
        sha.update(data)
        specs.append(
            learner_pb2.TensorSpec(
                name=name, dtype=dtype_name(tensor.dtype), shape=list(tensor.shape), nbytes=data.nbytes
            )
        )
        total += data.nbytes
    return learner_pb2.WeightManifest(version=version, tensors=specs, total_bytes=total, sha256=sha.hexdigest())


def iter_weight_chunks(
    state: Mapping[str, torch.Tensor],
    version: int,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    manifest: learner_pb2.WeightManifest | None = None,
) -> Iterator[learner_pb2.WeightChunk]:
    """Yield the stream for `state`: manifest on the first message, then raw bytes in order.

    The payload is the concatenation of all tensors' raw bytes in manifest order, cut into chunks
    of `chunk_bytes`; `(tensor_index, offset)` says where a chunk starts, and its bytes may run on
    into the following tensors. Packing small tensors (norms, biases) together keeps the message
    count at total_bytes / chunk_bytes: per-message cost, not bandwidth, dominates small models.

    Pass a precomputed `manifest` (as `PolicySnapshot` does) to skip re-hashing. `state` must not
    change while the iterator runs; serve a `PolicySnapshot` to guarantee that.
    """
    if chunk_bytes < 1:
        raise InvalidInput(f"chunk_bytes must be >= 1, got {chunk_bytes}")
    if manifest is None:
        manifest = build_manifest(state, version)
    pending_manifest: learner_pb2.WeightManifest | None = manifest
    pieces: list[memoryview] = []
    size = 0
    start = (0, 0)
    for index, tensor in enumerate(state.values()):
        data = raw_bytes(tensor)
        offset = 0
        while offset < data.nbytes:
            if not pieces:
                start = (index, offset)
            take = min(chunk_bytes - size, data.nbytes - offset)
            pieces.append(data[offset : offset + take])  # zero-copy slice
            size += take
            offset += take
            if size == chunk_bytes:
                yield _chunk(version, start, pieces, pending_manifest)
                pending_manifest, pieces, size = None, [], 0
    if pieces or pending_manifest is not None:  # the tail, or a manifest-only stream (no bytes at all)
        yield _chunk(version, start, pieces, pending_manifest)


def _chunk(
    version: int, start: tuple[int, int], pieces: list[memoryview], manifest: learner_pb2.WeightManifest | None
) -> learner_pb2.WeightChunk:
    # b"".join is the one copy protobuf requires (its bytes fields do not take memoryviews).
    chunk = learner_pb2.WeightChunk(version=version, tensor_index=start[0], offset=start[1], data=b"".join(pieces))
    if manifest is not None:
        chunk.manifest.CopyFrom(manifest)
    return chunk


class WeightAssembler:
    """Client side: rebuild tensors from a chunk stream, verifying order, sizes and SHA-256.

    Bytes are written straight into preallocated tensors (`torch.empty` of the manifest's dtype and
    shape, filled through a uint8 view). Chunks must arrive in order (as `iter_weight_chunks` sends
    them): that keeps the SHA-256 incremental and makes a dropped or reordered chunk detectable at
    once. `finish()` raises `DataCorruption` on any mismatch or truncation.
    """

    def __init__(self, expected_version: int | None = None, max_total_bytes: int | None = None) -> None:
        self.expected_version = expected_version
        self.max_total_bytes = max_total_bytes
        self.manifest: learner_pb2.WeightManifest | None = None
        self._names: list[str] = []
        self._tensors: list[torch.Tensor] = []
        self._views: list[np.ndarray[Any, Any]] = []
        self._nbytes: list[int] = []
        self._filled: list[int] = []
        self._cursor = 0
        self._sha = hashlib.sha256()
        self._received = 0

    @property
    def version(self) -> int:
        if self.manifest is None:
            raise DataCorruption("no manifest received yet")
        return int(self.manifest.version)

    @property
    def bytes_received(self) -> int:
        return self._received

    def _start(self, manifest: learner_pb2.WeightManifest) -> None:
        if self.expected_version is not None and manifest.version != self.expected_version:
            raise DataCorruption(f"asked for version {self.expected_version}, stream holds {manifest.version}")
        if self.max_total_bytes is not None and manifest.total_bytes > self.max_total_bytes:
            raise PayloadTooLarge(f"weights of {manifest.total_bytes} bytes exceed the limit {self.max_total_bytes}")
        seen: set[str] = set()
        total = 0
        for spec in manifest.tensors:
            dtype = DTYPES.get(spec.dtype)
            if dtype is None:
                raise InvalidInput(f"tensor '{spec.name}' has unknown dtype '{spec.dtype}'")
            if spec.name in seen:
                raise DataCorruption(f"manifest lists tensor '{spec.name}' twice")
            seen.add(spec.name)
            if any(d < 0 for d in spec.shape):
                raise DataCorruption(f"tensor '{spec.name}' has a negative dimension {list(spec.shape)}")
            tensor = torch.empty(tuple(spec.shape), dtype=dtype)
            expected = tensor.numel() * tensor.element_size()
            if spec.nbytes != expected:
                raise DataCorruption(
                    f"tensor '{spec.name}' declares {spec.nbytes} bytes, "
                    f"but {spec.dtype}{list(spec.shape)} is {expected}"
                )
            total += expected
            self._names.append(spec.name)
            self._tensors.append(tensor)
            # uint8 numpy view sharing the tensor's memory: writes land in the final tensor.
            self._views.append(tensor.reshape(-1).view(torch.uint8).numpy())
            self._nbytes.append(expected)
            self._filled.append(0)
        if total != manifest.total_bytes:
            raise DataCorruption(f"manifest total_bytes {manifest.total_bytes} != sum of tensor sizes {total}")
        self.manifest = manifest

    def feed(self, chunk: learner_pb2.WeightChunk) -> None:
        """Consume one chunk (raises DataCorruption/InvalidInput as soon as something is wrong)."""
        if chunk.HasField("manifest"):
            if self.manifest is not None:
                raise DataCorruption("a second manifest arrived mid-stream")
            self._start(chunk.manifest)
        if self.manifest is None:
            raise DataCorruption("the stream did not start with a manifest")
        if chunk.version != self.manifest.version:
            raise DataCorruption(f"chunk of version {chunk.version} in a stream of version {self.manifest.version}")
        size = len(chunk.data)
        if size == 0:
            return
        # Skip tensors already complete (and empty ones): the chunk must start in the first
        # incomplete tensor, at exactly the offset filled so far.
        self._skip_complete()
        i = chunk.tensor_index
        if self._cursor >= len(self._nbytes):
            raise DataCorruption(f"{size} bytes arrived after all {self.manifest.total_bytes} bytes were received")
        if i != self._cursor:
            raise DataCorruption(
                f"chunk for tensor {i} arrived while tensor {self._cursor} is incomplete (lost chunk?)"
            )
        if chunk.offset != self._filled[i]:
            raise DataCorruption(
                f"tensor '{self._names[i]}': chunk at offset {chunk.offset}, expected {self._filled[i]} (lost chunk?)"
            )
        if self._received + size > self.manifest.total_bytes:
            raise DataCorruption(f"stream carries more than the {self.manifest.total_bytes} bytes declared")
        payload = np.frombuffer(chunk.data, dtype=np.uint8)  # zero-copy view of the message bytes
        pos = 0
        while pos < size:  # the chunk may run on into the following tensors
            self._skip_complete()
            i = self._cursor
            take = min(size - pos, self._nbytes[i] - self._filled[i])
            self._views[i][self._filled[i] : self._filled[i] + take] = payload[pos : pos + take]
            self._filled[i] += take
            pos += take
        self._sha.update(chunk.data)
        self._received += size

    def _skip_complete(self) -> None:
        while self._cursor < len(self._nbytes) and self._filled[self._cursor] == self._nbytes[self._cursor]:
            self._cursor += 1

    def finish(self) -> dict[str, torch.Tensor]:
        """The assembled tensors, after checking completeness and the SHA-256."""
        if self.manifest is None:
            raise DataCorruption("the weight stream was empty (no manifest)")
        short = [n for n, f, b in zip(self._names, self._filled, self._nbytes, strict=True) if f != b]
        if short:
            raise DataCorruption(
                f"stream truncated: {len(short)} tensor(s) incomplete ({short[0]} first); "
                f"{self._received}/{self.manifest.total_bytes} bytes"
            )
        digest = self._sha.hexdigest()
        if digest != self.manifest.sha256:
            raise DataCorruption(f"sha256 mismatch: got {digest}, manifest says {self.manifest.sha256}")
        return dict(zip(self._names, self._tensors, strict=True))


class PolicySnapshot:
    """An immutable CPU copy of one published policy version, safe to stream while training goes on.

    The learner captures a snapshot right after an optimizer step; streams read only the snapshot,
    so they never race with the next step's in-place updates. The manifest (and its SHA-256) is
    computed once, on first use, and shared by every stream of this version.
    """

    def __init__(self, version: int, tensors: Mapping[str, torch.Tensor]) -> None:
        if version < 1:
            raise InvalidInput(f"a published policy version must be >= 1, got {version}")
        self.version = version
        # Private copies: later in-place changes to the source tensors cannot reach the snapshot.
        self._tensors = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}
        self.tensors: Mapping[str, torch.Tensor] = MappingProxyType(self._tensors)

    @classmethod
    def capture(
        cls,
        source: torch.nn.Module | Mapping[str, torch.Tensor],
        version: int,
        *,
        dtype: torch.dtype | None = None,
        dedupe_tied: bool = True,
    ) -> PolicySnapshot:
        """Snapshot a module's (or a state dict's) tensors, optionally cast to `dtype`.

        `dedupe_tied` keeps only the first name of tensors sharing storage (tied embeddings): they
        are sent once; backends accept the alias as optional.
        """
        state = source.state_dict() if isinstance(source, torch.nn.Module) else source
        picked: dict[str, torch.Tensor] = {}
        seen: set[tuple[int, int]] = set()
        for name, tensor in state.items():
            key = (int(tensor.untyped_storage().data_ptr()), int(tensor.storage_offset()))
            if dedupe_tied and tensor.numel() > 0 and key in seen:
                continue
            seen.add(key)
            picked[name] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
        return cls(version, picked)

    @cached_property
    def manifest(self) -> learner_pb2.WeightManifest:
        return build_manifest(self._tensors, self.version)

    @property
    def total_bytes(self) -> int:
        return int(self.manifest.total_bytes)

    def chunks(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[learner_pb2.WeightChunk]:
        return iter_weight_chunks(self._tensors, self.version, chunk_bytes, manifest=self.manifest)


async def stream_snapshot(
    snapshot: PolicySnapshot, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> AsyncIterator[learner_pb2.WeightChunk]:
    """Servicer helper: `async for c in stream_snapshot(snap, n): yield c` inside FetchWeights.

    Chunks are produced lazily, one at a time; grpc.aio's flow control paces the producer, so memory
    stays at a few chunks regardless of model size.
    """
    for chunk in snapshot.chunks(chunk_bytes):
        yield chunk


async def fetch_weights(
    channel: grpc.aio.Channel, version: int = 0, timeout_s: float = 120.0
) -> tuple[int, dict[str, torch.Tensor]]:
    """Fetch policy `version` (0 = latest) over `LearnerService.FetchWeights`; return (version, state).

    gRPC failures become the error taxonomy (`errors.from_rpc_error`); a damaged or incomplete
    stream raises `DataCorruption`. The channel's max receive message size must exceed the learner's
    `weight_chunk_bytes` plus a few KiB (the first message also carries the manifest).
    """
    stub = learner_pb2_grpc.LearnerServiceStub(channel)
    assembler = WeightAssembler(expected_version=version or None)
    call = stub.FetchWeights(learner_pb2.FetchWeightsRequest(version=version), timeout=timeout_s)
    try:
        async for chunk in call:
            assembler.feed(chunk)
    except grpc.aio.AioRpcError as err:
        raise errors.from_rpc_error(err) from err
    except errors.RspoError:
        call.cancel()  # stop the server streaming the rest of a stream we already rejected
        raise
    return assembler.version, assembler.finish()
