"""Start (or join) Ray, deploy the Analyzer (+ Ingress) application, and stop it."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Optional

import ray
from ray import serve
from ray.serve.config import AutoscalingConfig, AutoscalingPolicy, RequestRouterConfig

from models.errors import UserError

from ..config import AppConfig
from .deployments import Analyzer
from .ingress import Ingress

APP_NAME = "sentistream"
# By import path: the processes that route (ingress, driver) and the controller import them.
ROUTER_PATH = "stream.cluster.router.MostFreeCapacityRouter"
POLICY_PATH = "stream.cluster.placement:autoscale_on_streams"
HEAD_NODE_RESOURCE = "node:__internal_head__"  # Ray gives the head node this resource (1.0)
HEALTH_CHECK_PERIOD_S = 2.0  # Serve notices a dead replica (and starts another) about this fast


def connect(address: Optional[str], cfg: AppConfig, replicas: Optional[int]) -> bool:
    """Join the cluster at `address`, or start a local Ray sized for the replicas when there is none.
    True when this call started a local Ray (the caller stops it: `shutdown(local=True)`)."""
    if ray.is_initialized():
        return False
    if address:
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UserError(f"cannot join the Ray cluster at {address}: {exc} (check --ray-address, or drop it "
                            "to start a local Ray)") from None
        return False
    cluster = cfg.cluster
    count = replicas or cluster.min_replicas
    num_cpus = max(os.cpu_count() or 1, math.ceil(count * cluster.cpus_per_replica))
    # Local workers import this checkout's code first (a source tree run without installing it).
    root = str(Path(__file__).resolve().parent.parent.parent)
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": root}})
    return True


def build(cfg: AppConfig, replicas: Optional[int] = None, with_ingress: bool = True) -> Any:
    """The Serve application: Ingress(Analyzer) or the Analyzer alone (`run --ray`)."""
    cluster = cfg.cluster
    data = cfg.model_dump(mode="json")
    scaling: dict[str, Any]
    if replicas:
        scaling = {"num_replicas": replicas}
    else:
        scaling = {"autoscaling_config": AutoscalingConfig(
            min_replicas=cluster.min_replicas, max_replicas=cluster.max_replicas, initial_replicas=cluster.min_replicas,
            upscale_delay_s=5.0, downscale_delay_s=60.0, metrics_interval_s=cluster.stats_period_s,
            look_back_period_s=max(2.0, 3 * cluster.stats_period_s),
            policy=AutoscalingPolicy(policy_function=POLICY_PATH))}
    analyzer = serve.deployment(Analyzer).options(
        name="Analyzer",
        ray_actor_options={"num_cpus": cluster.cpus_per_replica, "num_gpus": cluster.gpus_per_replica},
        # Offers are short; a source holds its request for its whole run: room for both.
        max_ongoing_requests=2 * cluster.max_streams_per_replica + 4,
        request_router_config=RequestRouterConfig(request_router_class=ROUTER_PATH,
                                                  request_routing_stats_period_s=cluster.stats_period_s,
                                                  request_routing_stats_timeout_s=max(5.0, 5 * cluster.stats_period_s)),
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        health_check_timeout_s=10.0,
        graceful_shutdown_timeout_s=5.0,
        **scaling,
    ).bind(data)
    if not with_ingress:
        return analyzer
    # On the head node: the address `serve --ray` prints, the port operators expose (docs/scale-out.md).
    return serve.deployment(Ingress).options(
        name="Ingress", num_replicas=1,
        ray_actor_options={"num_cpus": 0, "resources": {HEAD_NODE_RESOURCE: 0.001}}).bind(analyzer, data, replicas)


def app_builder(args: dict[str, Any]) -> Any:
    """Ray Serve application builder for a config file (`serve run`, KubeRay `serveConfigV2`):
    import_path stream.cluster.deploy:app_builder, args {config: PATH, set: [KEY=VALUE...], replicas: N}."""
    from ..config import load_config

    cfg = load_config(args.get("config"), list(args.get("set") or []))
    return build(cfg, args.get("replicas"))


def deploy(cfg: AppConfig, replicas: Optional[int] = None, with_ingress: bool = True, name: str = APP_NAME) -> Any:
    """Deploys and waits until every replica is up; returns the application's handle."""
    serve.start(proxy_location="Disabled")  # the Ingress serves HTTP itself (aiohttp), not Serve's proxy
    return serve.run(build(cfg, replicas, with_ingress), name=name, route_prefix=None, blocking=False)


def shutdown(name: str = APP_NAME, local: bool = True) -> None:
    """Deletes the application; a local Ray (started by `connect`) is stopped too."""
    try:
        if ray.is_initialized():
            serve.delete(name)
            if local:
                serve.shutdown()
    finally:
        if local and ray.is_initialized():
            ray.shutdown()
