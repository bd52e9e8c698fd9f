"""Weight sync latency: "learner has new weights" -> "replica's backend has loaded them".

Both paths run over real gRPC on loopback (server and client in this process, one asyncio loop):

* streamed (the project's path): `PolicySnapshot.capture` (CPU copy + SHA-256 manifest) ->
  `LearnerService.FetchWeights` server stream of raw-byte chunks -> `WeightAssembler` (writes into
  preallocated tensors, verifies SHA-256) -> `TransformersBackend.load_state_dict`.
* naive baseline: `state_dict` -> `safetensors.torch.save` bytes -> one unary gRPC message ->
  `safetensors.torch.load` -> the same `load_state_dict`.

Shapes: `tiny` (builtin:tiny), `100m` (Llama ~110M params), `qwen2.5-0.5b` (Qwen2Config with the
Qwen2.5-0.5B shape, random init; meant for `--device cuda --dtype bfloat16` on a GPU machine).

    python bench/bench_weight_sync.py                       # tiny + 100m, CPU, float32
    python bench/bench_weight_sync.py --shape qwen2.5-0.5b --device cuda
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import grpc
import torch

from rspo_proto.v1 import learner_pb2, learner_pb2_grpc
from services.common.tiny_model import build_tiny_model, load_model_and_tokenizer
from services.common.weights import PolicySnapshot, fetch_weights, stream_snapshot
from services.rollout.backends.transformers_backend import TransformersBackend

_NAIVE_METHOD = "/bench.NaiveWeights/Fetch"
_MAX_MSG = 2**31 - 1  # the naive path ships the whole model in one message


def _make_model(shape: str, dtype: torch.dtype, device: str, seed: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    if shape == "tiny":
        folder = build_tiny_model(Path(tempfile.gettempdir()) / "rspo-bench-tiny")
        model, _ = load_model_and_tokenizer(str(folder), dtype, device)
        return model
    if shape == "100m":
        cfg: Any = LlamaConfig(
            vocab_size=32000,
            hidden_size=768,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=12,
            num_key_value_heads=12,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
        )
        cls: Any = LlamaForCausalLM
    elif shape == "qwen2.5-0.5b":
        cfg = Qwen2Config(
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            tie_word_embeddings=True,
        )
        cls = Qwen2ForCausalLM
    else:
        raise SystemExit(f"unknown shape {shape}")
    with torch.device(device):
        model = cls(cfg).to(dtype)
    return model.eval()


class _Learner(learner_pb2_grpc.LearnerServiceServicer):
    def __init__(self, model: Any, names: list[str], chunk_bytes: int) -> None:
        self.model = model
        self.names = names
        self.chunk_bytes = chunk_bytes
        self.snapshot: PolicySnapshot | None = None

    def publish(self, version: int) -> None:
        state = self.model.state_dict()
        self.snapshot = PolicySnapshot(version, {n: state[n] for n in self.names})

    async def GetStatus(self, request: Any, context: Any) -> Any:
        version = self.snapshot.version if self.snapshot else 0
        return learner_pb2.LearnerStatus(policy_version=version)

    async def FetchWeights(self, request: Any, context: Any) -> Any:
        assert self.snapshot is not None
        async for chunk in stream_snapshot(self.snapshot, self.chunk_bytes):
            yield chunk

    async def naive(self, request: bytes, context: Any) -> bytes:
        from safetensors.torch import save

        state = self.model.state_dict()
        return save({n: state[n].detach().cpu().contiguous() for n in self.names})


async def _run_shape(args: argparse.Namespace, shape: str) -> dict[str, Any]:
    from safetensors.torch import load as st_load

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    learner_model = _make_model(shape, dtype, args.device, seed=1)
    replica = TransformersBackend(_make_model(shape, dtype, args.device, seed=2), tokenizer=_NoTokenizer())
    names = list(replica.state_dict())  # canonical names (tied head sent once)
    learner = _Learner(learner_model, names, args.chunk_bytes)
    nparams = sum(p.numel() for p in learner_model.parameters())

    server = grpc.aio.server(options=[("grpc.max_send_message_length", _MAX_MSG)])
    learner_pb2_grpc.add_LearnerServiceServicer_to_server(learner, server)
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "bench.NaiveWeights",
                {"Fetch": grpc.unary_unary_rpc_method_handler(learner.naive)},  # raw bytes both ways
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", _MAX_MSG)])
    naive_call = channel.unary_unary(_NAIVE_METHOD)
    streamed: list[float] = []
    naive: list[float] = []
    phases: list[dict[str, float]] = []
    version = 0
    try:
        for rep in range(args.repeats + 1):  # first round is a warm-up, not recorded
            for method in ("streamed", "naive"):
                with torch.no_grad():  # "the learner has new weights"
                    for p in learner_model.parameters():
                        p.add_(1e-3)
                version += 1
                _sync(args.device)
                t0 = time.perf_counter()
                if method == "streamed":
                    learner.publish(version)
                    t1 = time.perf_counter()
                    got_version, state = await fetch_weights(channel, 0, timeout_s=600)
                    t2 = time.perf_counter()
                    replica.load_state_dict(state, got_version)
                else:
                    payload = await naive_call(b"", timeout=600)
                    t1 = t2 = time.perf_counter()
                    replica.load_state_dict(st_load(payload), version)
                _sync(args.device)
                elapsed = time.perf_counter() - t0
                if rep > 0:
                    (streamed if method == "streamed" else naive).append(elapsed)
                    if method == "streamed":
                        phases.append({"snapshot_s": t1 - t0, "fetch_s": t2 - t1, "load_s": elapsed - (t2 - t0)})
                _check_equal(learner_model, replica)
    finally:
        await channel.close()
        await server.stop(grace=None)
    total_bytes = learner.snapshot.total_bytes if learner.snapshot else 0
    med_s, med_n = statistics.median(streamed), statistics.median(naive)
    return {
        "shape": shape,
        "params": nparams,
        "bytes": total_bytes,
        "dtype": args.dtype,
        "device": args.device,
        "chunk_bytes": args.chunk_bytes,
        "streamed_s": streamed,
        "naive_s": naive,
        "streamed_median_s": med_s,
        "naive_median_s": med_n,
        "speedup_naive_over_streamed": med_n / med_s,
        "streamed_phases_median_s": {k: statistics.median(p[k] for p in phases) for k in phases[0]},
    }


class _NoTokenizer:
    """The bench never generates; the backend needs only pad/eos ids from its tokenizer."""

    pad_token_id = 0
    eos_token_id = 0


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _check_equal(learner_model: Any, replica: TransformersBackend) -> None:
    live = learner_model.state_dict()
    got = replica.state_dict()
    bad = [n for n, t in got.items() if not torch.equal(t, live[n].cpu())]
    if bad:
        raise SystemExit(f"replica differs from learner after sync: {bad[:3]}")


def _machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "grpcio": grpc.__version__,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _markdown(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    lines = [
        "# Weight sync: learner has new weights -> replica backend has loaded them",
        "",
        "Real gRPC on loopback (server and client in one process, one asyncio loop). `streamed` = "
        "PolicySnapshot + FetchWeights raw-byte chunks + WeightAssembler (SHA-256 verified) + "
        "backend.load_state_dict; `naive` = state_dict -> safetensors bytes -> one unary gRPC message -> "
        "safetensors load -> the same load_state_dict. Median of the recorded repeats (after one warm-up).",
        "",
        "Machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()),
        "",
        "| shape | params | MiB | dtype | device | streamed s | naive s | naive/streamed | "
        "snapshot s | fetch s | load s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ph = r["streamed_phases_median_s"]
        lines.append(
            f"| {r['shape']} | {r['params'] / 1e6:.1f}M | {r['bytes'] / 2**20:.1f} | {r['dtype']} | {r['device']} "
            f"| {r['streamed_median_s']:.4f} | {r['naive_median_s']:.4f} | {r['speedup_naive_over_streamed']:.2f}x "
            f"| {ph['snapshot_s']:.4f} | {ph['fetch_s']:.4f} | {ph['load_s']:.4f} |"
        )
    lines += [
        "",
        "The `qwen2.5-0.5b` shape (Qwen2Config with Qwen2.5-0.5B dimensions, random init, bf16) is meant for "
        "a GPU machine: `python bench/bench_weight_sync.py --shape qwen2.5-0.5b --device cuda --dtype bfloat16`. "
        "It was not run where these numbers come from unless it appears in the table above.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", action="append", choices=["tiny", "100m", "qwen2.5-0.5b"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-bytes", type=int, default=4 << 20)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    shapes = args.shape or ["tiny", "100m"]
    if args.dtype is None:
        args.dtype = "bfloat16" if shapes == ["qwen2.5-0.5b"] else "float32"
    results = [asyncio.run(_run_shape(args, shape)) for shape in shapes]
    machine = _machine(args.device)
    md = _markdown(results, machine)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.device == "cpu" else f"_{args.device.replace(':', '')}"
    (args.out / f"weight_sync{suffix}.json").write_text(
        json.dumps({"machine": machine, "results": results}, indent=2) + "\n"
    )
    (args.out / f"weight_sync{suffix}.md").write_text(md)


if __name__ == "__main__":
    main()
