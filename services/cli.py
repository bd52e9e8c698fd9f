"""The `rspo` command line. Config is parsed first; torch and transformers are imported only by
the subcommand that needs them, so `rspo --help` and config errors come back at once."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from services.common.config import RspoConfig, load_config, with_overrides
from services.common.errors import ConfigError, RspoError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", type=Path, default=None, help="run config YAML (see configs/); default: built-in defaults"
    )
    p.add_argument("--run-dir", type=Path, default=None, help="run directory (checkpoints, metrics, summary)")
    p.add_argument("--redis-url", default=None, help="redis://host:port/db (default: config, or embedded for train)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rspo", description="Risk-Seeking Policy Optimization for Pass@k / Max@k")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="run rollout, reward and learner locally as processes and train")
    _common(p)
    p.add_argument("--steps", type=int, default=None, help="override learner.total_steps")
    p.add_argument("--no-progress", action="store_true", help="no live progress output")
    p.add_argument("--fresh", action="store_true", help="delete a previous run in --run-dir first (default: resume it)")
    p = sub.add_parser("serve", help="run one service (for compose / Kubernetes)")
    p.add_argument("service", choices=["rollout", "reward", "learner"])
    _common(p)
    p.add_argument("--port", type=int, default=None, help="override the service's port")
    p = sub.add_parser("eval", help="held-out Pass@k / Max@k of the initial model or a checkpoint")
    _common(p)
    p.add_argument("--checkpoint", type=Path, default=None, help="checkpoint folder (default: latest in run dir)")
    p.add_argument("--initial", action="store_true", help="evaluate the initial model, not a checkpoint")
    sub.add_parser("tasks", help="list the task families")
    p = sub.add_parser("report", help="plots (PNG) and a markdown summary of a finished run: RUN_DIR/report/")
    p.add_argument("run_dir", type=Path)
    p = sub.add_parser("compare", help="one markdown table comparing runs (methods / checkpoints) side by side")
    p.add_argument("run_dirs", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    try:
        from services.k8s.cli import add_k8s_parser
    except ImportError:  # the k8s extra is optional for local use
        pass
    else:
        add_k8s_parser(sub)
    return parser


def _load(args: argparse.Namespace) -> RspoConfig:
    cfg = load_config(args.config)
    overrides: dict[str, object] = {}
    if args.run_dir is not None:
        overrides["run.run_dir"] = str(args.run_dir)
    if args.redis_url is not None:
        overrides["redis.url"] = args.redis_url
    if getattr(args, "steps", None) is not None:
        overrides["learner.total_steps"] = args.steps
    if getattr(args, "port", None) is not None:
        overrides[f"{args.service}.port"] = args.port
    return with_overrides(cfg, overrides) if overrides else cfg


def _serve(cfg: RspoConfig, service: str) -> None:
    from services.common.logging_setup import setup_logging
    from services.common.telemetry import setup_service_telemetry

    setup_logging(service, cfg.telemetry.log_level, cfg.telemetry.log_format)
    setup_service_telemetry(service, cfg)  # before any channel or server is built
    if service == "learner":
        from services.learner.main import serve as serve_learner

        asyncio.run(serve_learner(cfg, Path(cfg.run.run_dir)))
    elif service == "rollout":
        from services.rollout.main import serve as serve_rollout

        asyncio.run(serve_rollout(cfg))
    else:
        from services.reward.main import serve as serve_reward

        asyncio.run(serve_reward(cfg))


def _eval(cfg: RspoConfig, args: argparse.Namespace) -> dict[str, object]:
    from services.evaluation import evaluate_weights
    from services.learner.checkpoint import latest_checkpoint, load_model_weights

    if args.initial:
        return evaluate_weights(cfg, None, 0)
    ckpt = args.checkpoint or latest_checkpoint(Path(cfg.run.run_dir) / "checkpoints")
    if ckpt is None:
        raise ConfigError(f"no checkpoint under {cfg.run.run_dir}/checkpoints; pass --checkpoint or --initial")
    state = json.loads((Path(ckpt) / "state.json").read_text())
    return evaluate_weights(cfg, load_model_weights(Path(ckpt)), int(state["policy_version"]))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "tasks":
            from services.tasks import FAMILIES

            for name, factory in FAMILIES.items():
                print(f"{name}\t{'graded' if factory().graded else 'binary'}")
            return 0
        if args.command in ("report", "compare"):
            from services.report import run_report_command

            return run_report_command(args)
        if args.command == "k8s":
            from services.k8s.cli import run_k8s

            return run_k8s(args)
        cfg = _load(args)
        if args.command == "train":
            from services.launcher import train

            run_dir = Path(args.run_dir or cfg.run.run_dir)
            summary = train(cfg, run_dir, args.redis_url, progress=not args.no_progress, fresh=args.fresh)
            print(json.dumps({k: v for k, v in summary.items() if not k.startswith("eval_")}, indent=2))
        elif args.command == "serve":
            _serve(cfg, args.service)
        elif args.command == "eval":
            print(json.dumps(_eval(cfg, args), indent=2))
    except (ConfigError, RspoError) as err:
        print(f"rspo: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
