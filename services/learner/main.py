"""`rspo serve learner`: build the model and optimizer, then run the loop beside the gRPC server."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from rspo_proto.v1 import learner_pb2, learner_pb2_grpc
from services.common.config import RspoConfig
from services.common.grpc_server import ServerHandle, start_server
from services.common.lifecycle import install_stop_signals, run_service
from services.common.streams import connect
from services.common.tiny_model import (
    load_model_and_tokenizer,
    resolve_device,
    resolve_dtype,
    resolve_model_path,
)
from services.learner.servicer import LearnerServicer, SnapshotStore
from services.learner.worker import LearnerRuntime, LearnerWorker
from services.tasks import make_task

log = logging.getLogger(__name__)

SERVICE_NAME = learner_pb2.DESCRIPTOR.services_by_name["LearnerService"].full_name


def model_cache_dir(cfg: RspoConfig) -> Path:
    return Path(cfg.run.run_dir) / "model"


def build_runtime(cfg: RspoConfig) -> LearnerRuntime:
    device = resolve_device(cfg.model.device)
    path = resolve_model_path(cfg.model.name_or_path, model_cache_dir(cfg))
    # Master weights stay float32; bf16 is used through autocast on GPU (see step.py), and
    # published snapshots are cast to the rollout dtype.
    model, tokenizer = load_model_and_tokenizer(path, "float32", device, cfg.model.trust_remote_code)
    lc = cfg.learner
    optimizer = torch.optim.AdamW(model.parameters(), lr=lc.lr, weight_decay=lc.weight_decay, betas=lc.betas)
    ref_model = None
    if lc.loss.kl_coef > 0:
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return LearnerRuntime(
        model=model,
        optimizer=optimizer,
        encode=lambda text: list(tokenizer(text)["input_ids"]),
        pad_id=int(pad or 0),
        task=make_task(cfg.task),
        device=device,
        ref_model=ref_model,
        # model.dtype bfloat16/float16 on a GPU trains with autocast over float32 master weights.
        autocast_dtype=resolve_dtype(cfg.model.dtype)
        if device.type == "cuda" and cfg.model.dtype != "float32"
        else None,
    )


async def start(cfg: RspoConfig, run_dir: Path) -> tuple[ServerHandle, LearnerWorker]:
    """Build everything and start the gRPC server (port 0 in cfg picks a free one)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"run_dir": str(run_dir)})})
    runtime = await asyncio.to_thread(build_runtime, cfg)
    torch.manual_seed(cfg.run.seed)
    store = SnapshotStore(dtype=resolve_dtype(cfg.model.dtype))
    worker = LearnerWorker(cfg, run_dir, connect(cfg.redis), runtime, store.publish)
    servicer = LearnerServicer(worker, store, cfg.learner.weight_chunk_bytes)
    handle = await start_server(
        host=cfg.learner.host,
        port=cfg.learner.port,
        register=lambda s: learner_pb2_grpc.add_LearnerServiceServicer_to_server(servicer, s),
        service_names=[SERVICE_NAME],
        max_message_bytes=cfg.learner.max_message_bytes,
        reflection_enabled=cfg.learner.reflection,
    )
    return handle, worker


async def serve(cfg: RspoConfig, run_dir: Path, ready: Callable[[ServerHandle], None] | None = None) -> None:
    stop = asyncio.Event()
    install_stop_signals(stop)
    handle, worker = await start(cfg, run_dir)
    if ready:
        ready(handle)
    try:
        await run_service(handle, worker.run, stop, cfg.learner.drain_timeout_s)
    finally:
        await worker.client.aclose()
