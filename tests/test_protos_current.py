"""The committed generated code in rspo_proto/ must equal a fresh generation from protos/."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_current(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)], check=True)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file() and p.suffix in {".py", ".pyi"})
    committed = sorted(
        p.relative_to(ROOT)
        for p in (ROOT / "rspo_proto").rglob("*")
        if p.is_file() and p.suffix in {".py", ".pyi"} and "__pycache__" not in p.parts
    )
    assert fresh == committed, "generated file set differs: run `make protos` and commit"
    stale = [str(p) for p in fresh if not filecmp.cmp(tmp_path / p, ROOT / p, shallow=False)]
    assert not stale, f"stale generated code {stale}: run `make protos` and commit"


def test_generated_imports_need_no_rewriting() -> None:
    from rspo_proto.v1 import learner_pb2_grpc, reward_pb2_grpc, rollout_pb2_grpc, sample_pb2

    assert sample_pb2.DESCRIPTOR.package == "rspo.v1"
    for mod, name in (
        (reward_pb2_grpc, "RewardService"),
        (rollout_pb2_grpc, "RolloutService"),
        (learner_pb2_grpc, "LearnerService"),
    ):
        assert hasattr(mod, f"{name}Stub") and hasattr(mod, f"add_{name}Servicer_to_server")
