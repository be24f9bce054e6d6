"""Scale-out on Ray Serve (stream/cluster): a real local Ray (2 CPUs) with 2 CPU Analyzer replicas of
the tiny CLIP, real aiortc clients through the Ingress, a replica killed by its PID, `run --ray`.

Ray starts once for the module (the slow tests share it, in file order); the fast tests at the top
need no Ray: placement, the autoscaling rule, config checks, metrics merging, "plain serve and run
never import Ray"."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import aiohttp
import pytest
from aiortc import RTCPeerConnection
from prometheus_client.parser import text_string_to_metric_families

from models.errors import ConfigError
from stream.cluster.placement import ReplicaLoad, autoscale_on_streams, rank_by_free_capacity, replicas_wanted
from stream.config import load_config
from tests.conftest import ROOT, TINY_CONFIG
from tests.test_server import Client, FlatVideo, wait_for

on_module_loop = pytest.mark.asyncio(loop_scope="module")


# ---------------------------------------------------------------------------------------- no Ray
def test_placement_prefers_the_most_free_capacity_and_counts_unreported_placements():
    a, b, c = ReplicaLoad("a", streams=3, capacity=4), ReplicaLoad("b", streams=1, capacity=4), ReplicaLoad("c", streams=4, capacity=4)
    assert rank_by_free_capacity([a, b, c]) == [["b"], ["a"], ["c"]]  # full last: it refuses itself
    # Two offers sent to b since its last report: b has 1 free, a has 1 free -> one rank, Serve picks.
    assert rank_by_free_capacity([a, b, c], {"b": 2}) == [["a", "b"], ["c"]]
    # Bigger replicas (a GPU one next to a CPU one) get more.
    assert rank_by_free_capacity([ReplicaLoad("gpu", streams=10, capacity=32), ReplicaLoad("cpu", streams=0, capacity=4)])[0] == ["gpu"]
    # A replica that never reported (just started) counts as empty.
    assert ReplicaLoad.from_stats("new", None).streams == 0


def test_autoscaling_wants_replicas_for_streams_in_use_plus_one_free_slot():
    assert replicas_wanted(0, 4, 1, 5) == 1
    assert replicas_wanted(4, 4, 1, 5) == 2  # full: one more for the next call
    assert replicas_wanted(7, 4, 1, 5) == 2
    assert replicas_wanted(100, 4, 1, 5) == 5  # never past max_replicas
    assert replicas_wanted(0, 4, 2, 5) == 2
    ctx = SimpleNamespace(aggregated_metrics={"streams": {"r1": 4.0, "r2": 3.0}, "capacity": {"r1": 4.0, "r2": 4.0}},
                          capacity_adjusted_min_replicas=1, capacity_adjusted_max_replicas=8)
    assert autoscale_on_streams(ctx)[0] == 2
    ctx.aggregated_metrics["streams"]["r2"] = 4.0
    assert autoscale_on_streams(ctx)[0] == 3


def test_cluster_config_is_validated():
    cfg = load_config(TINY_CONFIG, ["cluster.gpus_per_replica=1", "cluster.max_streams_per_replica=16"])
    assert cfg.cluster.gpus_per_replica == 1 and cfg.cluster.max_streams_per_replica == 16
    for bad in (["cluster.min_replicas=3", "cluster.max_replicas=2"], ["cluster.cpus_per_replica=0"],
                ["cluster.max_streams_per_replica=0"], ["cluster.replicas=2"]):
        with pytest.raises(ConfigError):
            load_config(TINY_CONFIG, bad)


def test_merged_metrics_label_each_replica():
    from stream.cluster.metrics import merge_metrics

    text = "# HELP x_total frames\n# TYPE x_total counter\nx_total 3.0\n"
    out = merge_metrics({"r1": text, "r2": text.replace("3.0", "5.0"), "ingress": ""}).decode()
    samples = {s.labels["replica"]: s.value for f in text_string_to_metric_families(out) for s in f.samples}
    assert samples == {"r1": 3.0, "r2": 5.0}


def test_plain_serve_and_run_never_import_ray():
    code = ("import sys, stream.cli, stream.commands.serve, stream.commands.run, stream.server, stream.cluster; "
            "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_cluster_flags_need_ray(capsys):
    from stream.cli import main

    assert main(["run", "--source", "a.mp4", "--source", "b.mp4", "--config", str(TINY_CONFIG)]) == 2
    assert "needs --ray" in capsys.readouterr().err
    assert main(["serve", "--replicas", "2", "--config", str(TINY_CONFIG)]) == 2
    assert "--replicas needs --ray" in capsys.readouterr().err
    assert main(["run", "--config", str(TINY_CONFIG)]) == 2
    assert "give --source" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- real Ray
@pytest.fixture(scope="module")
def cluster():
    """A local Ray (2 CPUs) with the sentistream app: Ingress + 2 Analyzer replicas (0.5 CPU each)."""
    ray = pytest.importorskip("ray")
    from stream.cluster import deploy

    cfg = load_config(TINY_CONFIG, ["cluster.cpus_per_replica=0.5", "cluster.max_streams_per_replica=2",
                                    "server.port=0", "server.media_timeout_s=30", "server.max_clients_per_address=3",
                                    "server.connect_timeout_s=5"])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        handle = deploy.deploy(cfg, replicas=2)
        where = handle.address.remote().result()
        yield SimpleNamespace(base=f"http://127.0.0.1:{where['port']}/", cfg=cfg, handle=handle)
    finally:
        deploy.shutdown(deploy.APP_NAME, local=True)


async def health(base: str) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "healthz") as r:
            assert r.status == 200
            return await r.json()


async def until_health(base: str, cond, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        h = await health(base)
        if cond(h):
            return h
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last /healthz: {h}")
        await asyncio.sleep(0.25)


class Tracked(Client):
    """A Client that notes when its data channel last brought anything (heartbeats included)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.last_heard = time.monotonic()

    async def connect(self, base: str, **kw):
        status, body = await super().connect(base, **kw)
        self.channel.on("message", lambda _: setattr(self, "last_heard", time.monotonic()))
        return status, body


@pytest.mark.slow
@pytest.mark.timeout(600)
@on_module_loop
async def test_two_calls_land_on_different_replicas_and_metrics_come_from_them(cluster):
    base = cluster.base
    # A replica is listed once Serve runs it; its capacity once it has reported its load (~1 s later).
    h = await until_health(base, lambda h: len(h["replicas"]) == 2 and all(r["capacity"] == 2 for r in h["replicas"]), 60,
                           "2 replicas that reported their load")
    assert h["max_clients"] == 4
    clients = [Tracked([FlatVideo()]), Tracked([FlatVideo()])]
    try:
        for c in clients:
            status, body = await c.connect(base)
            assert status == 200, body
        for c in clients:
            await wait_for(lambda c=c: c.of("sentiment"), 90, "estimates through the cluster")
            await wait_for(lambda c=c: c.of("heartbeat"), 10, "heartbeats on the data channel")
        h = await until_health(base, lambda h: sorted(r["streams"] for r in h["replicas"]) == [1, 1], 20,
                               "one stream on each replica")
        assert h["connections"] == 2
        # /metrics at the ingress: the replicas' own counters, not the ingress's zeros. Each replica's
        # series arrive with its load report (~1 s apart), so wait until every replica's has.
        replica_ids = {r["id"] for r in h["replicas"]}
        deadline = time.monotonic() + 20
        while True:
            async with aiohttp.ClientSession() as http:
                async with http.get(base + "metrics") as r:
                    text = await r.text()
            frames = {s.labels["replica"]: s.value for f in text_string_to_metric_families(text)
                      for s in f.samples if s.name == "sentistream_frames_in_total"}
            if all(frames.get(r, 0) > 0 for r in replica_ids) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert replica_ids <= set(frames), frames
        assert all(frames[r] > 0 for r in replica_ids), frames
    finally:
        for c in clients:
            await c.close()
    await until_health(base, lambda h: h["connections"] == 0, 30, "slots freed after the calls")


async def pending_offer(base: str, local_addr: str = "127.0.0.1") -> tuple[int, dict, dict]:
    """POST an offer and never connect: it holds a slot for server.connect_timeout_s."""
    pc = RTCPeerConnection()
    pc.addTrack(FlatVideo())
    await pc.setLocalDescription(await pc.createOffer())
    try:
        connector = aiohttp.TCPConnector(local_addr=(local_addr, 0))
        async with aiohttp.ClientSession(connector=connector) as http:
            async with http.post(base + "offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}) as r:
                return r.status, await r.json(), dict(r.headers)
    finally:
        await pc.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
@on_module_loop
async def test_cluster_wide_address_cap_and_503_only_when_every_replica_is_full(cluster):
    base = cluster.base
    await until_health(base, lambda h: len(h["replicas"]) == 2 and h["connections"] == 0, 60, "2 idle replicas")
    # 3 per address, 2 per replica: the third one from 127.0.0.1 is on the other replica and still counts.
    for _ in range(3):
        status, body, _ = await pending_offer(base)
        assert status == 200, body
    status, body, headers = await pending_offer(base)
    assert status == 429 and "too many connections from 127.0.0.1" in body["error"]
    assert headers.get("Retry-After") == "5"
    status, body, _ = await pending_offer(base, "127.0.0.2")  # the last free slot, on the less full replica
    assert status == 200, body
    h = await until_health(base, lambda h: h["connections"] == 4, 10, "4 slots taken")
    assert sorted(r["streams"] for r in h["replicas"]) == [2, 2]
    status, body, headers = await pending_offer(base, "127.0.0.2")
    assert status == 503 and body["error"].startswith("server full") and headers.get("Retry-After") == "5"
    await until_health(base, lambda h: h["connections"] == 0, 30, "pending slots given back")


@pytest.mark.slow
@pytest.mark.timeout(600)
@on_module_loop
async def test_killed_replica_its_client_learns_new_offers_succeed_and_it_comes_back(cluster):
    base = cluster.base
    await until_health(base, lambda h: len(h["replicas"]) == 2 and h["connections"] == 0, 60, "2 idle replicas")
    victim_client = Tracked([FlatVideo()])
    others: list[Tracked] = []
    try:
        status, body = await victim_client.connect(base)
        assert status == 200, body
        await wait_for(lambda: victim_client.of("heartbeat"), 60, "the first heartbeat")
        h = await until_health(base, lambda h: any(r["streams"] == 1 for r in h["replicas"]), 20, "the call placed")
        victim = next(r for r in h["replicas"] if r["streams"] == 1)
        os.kill(victim["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        # The client learns within seconds: heartbeats stop (a killed process sends no goodbye), the
        # rule the page applies (4 s of silence -> lost, reconnect).
        await wait_for(lambda: time.monotonic() - victim_client.last_heard > 4, 15, "the dead replica's heartbeats to stop")
        assert victim_client.last_heard - killed_at < 1.5
        # New offers keep succeeding meanwhile (the survivor, or the replacement).
        for _ in range(2):
            c = Tracked([FlatVideo()])
            others.append(c)
            status, body = await c.connect(base)
            assert status == 200, body
            await wait_for(lambda c=c: c.of("heartbeat"), 60, "a new call after the kill")
        # Serve restarts the replica: two replicas again, the victim's id gone.
        h = await until_health(base, lambda h: len(h["replicas"]) == 2 and victim["id"] not in {r["id"] for r in h["replicas"]},
                               120, "the replica to come back")
        assert victim["pid"] not in {r["pid"] for r in h["replicas"]}
    finally:
        for c in [victim_client, *others]:
            await c.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
@on_module_loop
async def test_run_ray_three_files_one_jsonl_with_every_stream_and_a_summary_each(cluster, tmp_path):
    from ray import serve

    from scripts.media import make_video
    from stream.cluster import deploy
    from stream.cluster.sources import run_on_cluster

    serve.delete(deploy.APP_NAME)  # the CPUs go to run --ray's own replicas
    clips = [str(make_video(tmp_path / f"clip{i}.mp4", 3.0)) for i in range(3)]
    out = tmp_path / "events.jsonl"
    status = await asyncio.to_thread(run_on_cluster, cluster.cfg, clips, output=str(out), address=None,
                                     replicas=2, realtime=False)
    assert status == 0
    events = [json.loads(line) for line in out.read_text().splitlines()]
    streams = {e["stream"] for e in events}
    assert streams == set(clips)
    for clip in clips:
        mine = [e for e in events if e["stream"] == clip]
        assert any(e["type"] == "sentiment" for e in mine), clip
        assert [e["type"] for e in mine].count("summary") == 1 and mine[-1]["type"] == "summary"


@pytest.mark.slow
@pytest.mark.timeout(600)
@on_module_loop
async def test_autoscaling_adds_a_replica_for_streams_in_use_and_503_at_max(cluster):
    """1..2 replicas of 1 stream each: one call fills the first, the policy (streams in use + one
    free slot) adds the second, the next call lands there; a third is refused (max reached)."""
    from ray import serve

    from stream.cluster import deploy

    serve.delete(deploy.APP_NAME, _blocking=True)
    cfg = load_config(TINY_CONFIG, ["cluster.cpus_per_replica=0.5", "cluster.max_streams_per_replica=1",
                                    "cluster.min_replicas=1", "cluster.max_replicas=2", "server.port=0",
                                    "server.media_timeout_s=60"])
    handle = await asyncio.to_thread(deploy.deploy, cfg)
    where = await handle.address.remote()
    base = f"http://127.0.0.1:{where['port']}/"
    h = await until_health(base, lambda h: len(h["replicas"]) == 1, 60, "min_replicas up")
    assert h["max_clients"] == 2  # what autoscaling can reach
    clients = [Tracked([FlatVideo()]), Tracked([FlatVideo()])]
    try:
        status, body = await clients[0].connect(base)
        assert status == 200, body
        first = h["replicas"][0]["id"]
        h = await until_health(base, lambda h: len(h["replicas"]) == 2, 180, "a second replica for the stream in use")
        status, body = await clients[1].connect(base)
        assert status == 200, body
        h = await until_health(base, lambda h: sorted(r["streams"] for r in h["replicas"]) == [1, 1], 20, "one stream each")
        assert first in {r["id"] for r in h["replicas"]}
        status, body, _ = await pending_offer(base)
        assert status == 503, body
    finally:
        for c in clients:
            await c.close()


def test_serve_config_application_builder_builds_without_a_cluster():
    """`import_path: stream.cluster.deploy:app_builder` (KubeRay serveConfigV2, `serve run`) builds the
    Ingress(Analyzer) application from a config file and overrides; a bad key is a ConfigError."""
    pytest.importorskip("ray")
    from ray.serve import Application

    from stream.cluster.deploy import app_builder

    app = app_builder({"config": str(TINY_CONFIG), "set": ["cluster.gpus_per_replica=1"], "replicas": 2})
    assert isinstance(app, Application)
    with pytest.raises(ConfigError):
        app_builder({"config": str(TINY_CONFIG), "set": ["cluster.gpu=1"]})
