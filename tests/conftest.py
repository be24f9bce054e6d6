"""Shared fixtures: the tiny random CLIP config and model (built once per session)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import torch
from aiohttp.test_utils import TestServer

from stream.config import load_config
from stream.runtime import build_runtime
from stream.server import create_app

ROOT = Path(__file__).parent.parent
TINY_CONFIG = ROOT / "configs" / "tiny-test.yaml"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def tiny_cfg():
    return load_config(TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_model(tiny_cfg):
    from models.factory import build_model

    return build_model(tiny_cfg)


def perturb_fusion(fusion: torch.nn.Module, seed: int = 0, scale: float = 0.05, gate: float = 0.5) -> torch.nn.Module:
    """A copy of `fusion` with open gates and every other weight nudged (seeded): cross-attention matters."""
    fusion = copy.deepcopy(fusion)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in fusion.named_parameters():
            if "gate" in name:
                p.fill_(gate)
            else:
                p.add_(scale * torch.randn(p.shape, generator=gen).to(p.device, p.dtype))
    return fusion.eval()


@pytest.fixture
def perturbed_fusion(tiny_model):
    """Factory fixture: perturbed_fusion(seed=0) -> a perturbed copy of the tiny model's fusion."""
    return lambda seed=0, **kw: perturb_fusion(tiny_model.fusion, seed=seed, **kw)


# The server tests' shared runtime (one model load per test module) and app factory.
@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def runtime():
    rt = await build_runtime(load_config(TINY_CONFIG))
    yield rt
    await rt.close()


@pytest_asyncio.fixture(loop_scope="module")
async def serve(runtime):
    """serve(**server_overrides) -> base URL of a fresh app on the shared runtime."""
    servers: list[TestServer] = []

    async def start(**server: Any) -> str:
        cfg = load_config(TINY_CONFIG, [f"server.{k}={v}" for k, v in server.items()])
        srv = TestServer(create_app(runtime, cfg), host="127.0.0.1")
        await srv.start_server()
        servers.append(srv)
        return str(srv.make_url("/"))

    yield start
    for srv in servers:
        await srv.close()


