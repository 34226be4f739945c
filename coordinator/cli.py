"""Subcommands owned by the coordinator: `coordinator serve` and `campaign post`.

Cheap to import: the handlers import aiohttp, torch and the server only when they run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

Subparsers = Any

DEFAULT_PORT = 8470


def add_coordinator(commands: Subparsers) -> None:
    parser: argparse.ArgumentParser = commands.add_parser("coordinator", help="run the coordinator server")
    sub = parser.add_subparsers(dest="coordinator_command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="serve volunteers (WebSocket), the REST API and /metrics",
        description=(
            "Serve the coordinator. State lives in --data-dir (SQLite + blobs) unless --database and --blobs "
            "name a PostgreSQL database and an S3 bucket, which several replicas share (README: Running at "
            "scale); the admin token is written to DATA_DIR/admin_token on first start. The embedded corpus "
            "is available as dataset 'stdlib'."
        ),
    )
    serve.add_argument("--data-dir", type=Path, required=True, metavar="DIR")
    serve.add_argument(
        "--database",
        default="",
        metavar="URL",
        help="postgresql://USER[:PASSWORD]@HOST[:PORT]/DB for state that replicas share (default: SQLite in DATA_DIR)",
    )
    serve.add_argument(
        "--blobs",
        default="",
        metavar="URL",
        help=(
            "s3://BUCKET/PREFIX for blobs that replicas share; the endpoint and credentials come from "
            "AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION (default: DATA_DIR/blobs)"
        ),
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a prepared dataset campaigns may use (repeatable)",
    )
    serve.add_argument("--public-url", default="", help="URL volunteers and browsers reach this server at")
    serve.add_argument(
        "--replica-url",
        default="",
        metavar="URL",
        help=(
            "serve as one of several replicas sharing --database and --blobs: the http://HOST:PORT the other "
            "replicas reach this one at (never exposed through the load balancer)"
        ),
    )
    serve.add_argument("--replica-name", default="", metavar="NAME", help="this replica's name (default: HOST:PORT)")
    serve.add_argument(
        "--lease-ttl",
        type=float,
        default=10.0,
        metavar="S",
        help="how long a campaign's leader may go silent before another replica takes it over (default: 10)",
    )
    serve.add_argument(
        "--heartbeat-interval",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="how often volunteers send progress, or keepalive when they have nothing else to say (keep it well "
        "under campaigns' lease_s)",
    )
    serve.add_argument(
        "--idle-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="close a volunteer's connection that sent nothing for this long (default 120; at least twice "
        "--heartbeat-interval)",
    )
    serve.add_argument(
        "--work-hold",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="while no campaign trains, hold a volunteer's request for work this long and answer it the moment "
        "one starts (default 30, at most 30; 0 answers 'no work' at once)",
    )
    serve.add_argument(
        "--eval-grace",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="while volunteers that evaluate are connected, give them this long to measure a new version's "
        "holdout loss (two that agree settle it) before measuring it here (default 60; 0: always here)",
    )
    serve.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        metavar="N",
        help="threads each PyTorch operation may use (default 1: the server runs many requests at once on its "
        "own worker threads, and the holdout evaluator must not take every core from ingestion)",
    )
    serve.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="ADDR[/BITS]",
        help="a reverse proxy whose X-Forwarded-For is believed (repeatable); without one, the peer's address "
        "is the volunteer's",
    )
    serve.add_argument(
        "--source-prefix-v4",
        type=int,
        default=24,
        metavar="BITS",
        help="IPv4 addresses in one network of this many bits count as one source for registration limits and "
        "bans (default 24; 8-32)",
    )
    serve.add_argument(
        "--source-prefix-v6",
        type=int,
        default=48,
        metavar="BITS",
        help="the same for IPv6 (default 48; 16-128)",
    )
    serve.add_argument(
        "--registration-burst",
        type=int,
        default=20,
        metavar="N",
        help="new volunteers one source (network prefix) may register at once (default 20)",
    )
    serve.add_argument(
        "--registrations-per-minute",
        type=float,
        default=6.0,
        metavar="RATE",
        help="and then how many per minute (default 6)",
    )
    serve.add_argument(
        "--max-connected-per-source",
        type=int,
        default=64,
        metavar="N",
        help="volunteers from one source connected at once (default 64; 0: no cap)",
    )
    serve.add_argument(
        "--limit-loopback",
        action="store_true",
        help="apply the limits and bans per source to loopback connections too (by default they are exempt: "
        "they are this machine's own, or a reverse proxy's that --trusted-proxy should name)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    import logging

    from aiohttp import web

    from coordinator.admission import AdmissionConfig
    from coordinator.app import create_app
    from coordinator.service import CoordinatorConfig
    from coordinator.sources import SourcePolicy, parse_networks
    from training.data import DataError, ensure_default_dataset

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sources = SourcePolicy(
            v4_bits=args.source_prefix_v4,
            v6_bits=args.source_prefix_v6,
            trusted_proxies=parse_networks(args.trusted_proxy),
            limit_loopback=args.limit_loopback,
        )
        admission = AdmissionConfig(
            registration_burst=args.registration_burst,
            registrations_per_minute=args.registrations_per_minute,
            max_connected_per_source=args.max_connected_per_source,
        )
    except ValueError as error:
        print(f"commonweights coordinator serve: {error}", file=sys.stderr)
        return 2
    from coordinator.store import url_problems

    if args.replica_url and (not args.database or not args.blobs):
        print(
            "commonweights coordinator serve: --replica-url needs --database postgresql://… and --blobs s3://…, "
            "which the replicas share",
            file=sys.stderr,
        )
        return 2
    if args.replica_url and not args.replica_url.startswith(("http://", "https://")):
        print("commonweights coordinator serve: --replica-url wants http://HOST:PORT", file=sys.stderr)
        return 2
    for problem in url_problems(args.database, args.blobs):
        print(f"commonweights coordinator serve: {problem}", file=sys.stderr)
    if url_problems(args.database, args.blobs):
        return 2
    if not 1.0 <= args.lease_ttl <= 600:
        print("commonweights coordinator serve: --lease-ttl must be within 1 and 600 s", file=sys.stderr)
        return 2
    if not 1.0 <= args.heartbeat_interval <= 3600:
        print("commonweights coordinator serve: --heartbeat-interval must be within 1 and 3600 s", file=sys.stderr)
        return 2
    if not 2 * args.heartbeat_interval <= args.idle_timeout <= 86400:
        print(
            "commonweights coordinator serve: --idle-timeout must be at least twice --heartbeat-interval "
            f"({2 * args.heartbeat_interval:g} s) and at most 86400 s",
            file=sys.stderr,
        )
        return 2
    if not 0 <= args.work_hold <= 30:
        print("commonweights coordinator serve: --work-hold must be within 0 and 30 s", file=sys.stderr)
        return 2
    datasets: dict[str, Path] = {}
    for item in args.dataset:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            print(f"commonweights coordinator serve: --dataset wants NAME=DIR, got {item!r}", file=sys.stderr)
            return 2
        datasets[name] = Path(path)
    if "stdlib" not in datasets:
        try:
            datasets["stdlib"] = ensure_default_dataset(progress=False)
        except DataError as error:
            print(f"the embedded corpus is not available: {error}", file=sys.stderr)
    public_url = args.public_url or f"http://{args.host}:{args.port}"
    if args.torch_threads < 1:
        print("commonweights coordinator serve: --torch-threads must be at least 1", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.torch_threads)
    config = CoordinatorConfig(
        data_dir=args.data_dir,
        database=args.database,
        blobs=args.blobs,
        datasets=datasets,
        public_url=public_url,
        replica_url=args.replica_url,
        replica_name=args.replica_name,
        lease_ttl_s=args.lease_ttl,
        heartbeat_interval_s=args.heartbeat_interval,
        idle_timeout_s=args.idle_timeout,
        work_hold_s=args.work_hold,
        eval_grace_s=max(0.0, args.eval_grace),
        sources=sources,
        admission=admission,
    )
    print(
        f"coordinator at {public_url} (volunteers: ws://{args.host}:{args.port}/ws); "
        f"admin token in {args.data_dir / 'admin_token'}",
        flush=True,
    )
    web.run_app(create_app(config), host=args.host, port=args.port, print=None, shutdown_timeout=5.0)
    return 0


def add_campaign(commands: Subparsers) -> None:
    parser: argparse.ArgumentParser = commands.add_parser("campaign", help="manage campaigns on a coordinator")
    sub = parser.add_subparsers(dest="campaign_command", required=True, metavar="COMMAND")
    post = sub.add_parser("post", help="post a campaign spec (TOML) to a coordinator")
    post.add_argument("spec", type=Path, metavar="SPEC.toml")
    post.add_argument("--coordinator", required=True, metavar="URL", help="e.g. http://127.0.0.1:8470")
    post.add_argument("--token", required=True, help="an admin or project-lead token")
    post.set_defaults(handler=_run_campaign_post)


def _run_campaign_post(args: argparse.Namespace) -> int:
    from coordinator.client import ApiError, CoordinatorClient

    try:
        text = args.spec.read_text()
    except OSError as error:
        print(f"can't read {args.spec}: {error.strerror}", file=sys.stderr)
        return 2
    try:
        body = CoordinatorClient(args.coordinator, args.token, timeout=60).post_campaign(text)
    except ApiError as error:
        print(f"refused ({error.status}): {error.message}", file=sys.stderr)
        for item in error.problems:
            print(f"  - {item}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"can't reach the coordinator at {args.coordinator}: {error}", file=sys.stderr)
        return 1
    print(
        f"campaign {body['name']} posted as #{body['id']}: {body['rounds_total']} rounds, "
        f"{body['token_budget']:,} tokens"
    )
    return 0
