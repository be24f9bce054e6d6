"""`sentistream serve --ray`: deploy Ingress + Analyzer on a Ray cluster (a local one when no
address is given), say where to connect, run until Ctrl-C, then take the application down."""
from __future__ import annotations

import signal
import sys
import threading
from typing import Optional

from ..config import AppConfig
from ..events import RANDOM_WEIGHTS_WARNING
from . import deploy


def serve_cluster(cfg: AppConfig, address: Optional[str], replicas: Optional[int], warn_open: bool = False) -> int:
    started = deploy.connect(address, cfg, replicas)
    stop = threading.Event()
    try:
        handle = deploy.deploy(cfg, replicas, with_ingress=True)
        where = handle.address.remote().result()
        host = where["node_ip"] if where["host"] in ("0.0.0.0", "::", "") else where["host"]
        shown = f"[{host}]" if ":" in host else host
        scale = f"{replicas} replicas" if replicas else (f"{cfg.cluster.min_replicas}-{cfg.cluster.max_replicas} "
                                                         "replicas (autoscaling on streams)")
        print(f"sentistream serving on http://{shown}:{where['port']}/ from a Ray cluster: {scale}, "
              f"{cfg.cluster.max_streams_per_replica} streams each (Ctrl-C to stop)", file=sys.stderr, flush=True)
        if cfg.vision.pretrained == "random":
            print(f"warning: {RANDOM_WEIGHTS_WARNING}", file=sys.stderr)
        if warn_open:
            print("warning: listening beyond this machine without --token: anyone who can reach it can connect", file=sys.stderr)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(0.5):
            pass
        print("shutting down", file=sys.stderr)
    finally:
        deploy.shutdown(deploy.APP_NAME, local=started)
    return 0
