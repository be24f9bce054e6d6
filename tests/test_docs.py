"""The documentation as tests: the user guide builds with `mkdocs build --strict` (no broken link or
anchor, no page left out of the nav, no font fetched from the web), the README stays short and its
links resolve, and every config key, CLI flag and HTTP route the code defines is in the guide."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from stream.cli import build_parser
from stream.config import AppConfig

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _text(rel: str) -> str:
    return (DOCS / rel).read_text(encoding="utf-8")


def test_user_guide_builds_strict_and_offline(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        why = "mkdocs / mkdocs-material not installed: pip install -e '.[docs]' (make install does)"
        if os.environ.get("CI"):  # CI installs the docs extra: a missing one is a broken install, not a skip
            pytest.fail(why)
        pytest.skip(why)
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # mkdocs-material's banner about its successor
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (site / "index.html").is_file()
    assert (site / "benchmarks" / "index.html").is_file()
    # The machine-readable results travel with the site, next to the page that cites them.
    assert (site / "results" / "bench-webcam.json").is_file()
    pages = list(site.rglob("*.html"))
    assert len(pages) >= 15, pages
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert "fonts.googleapis.com" not in html and "fonts.gstatic.com" not in html, page


_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_readme_is_short_and_its_relative_links_resolve():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200, "README.md over 200 lines: move detail into docs/"
    targets = [t for t in _LINK.findall(readme) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    assert targets, "README.md links nothing"
    missing = [t for t in targets if not (ROOT / t.split("#", 1)[0]).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out: list[str] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _keys(ann, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def test_every_config_key_is_in_the_configuration_reference():
    page = _text("configuration.md")
    keys = _keys(AppConfig)
    assert len(keys) > 80, keys  # the walk found the sections
    missing = [k for k in keys if f"`{k}`" not in page]
    assert not missing, f"config keys missing from docs/configuration.md: {missing}"


def test_every_command_and_flag_is_in_the_command_line_page():
    page = _text("cli.md")
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    missing = []
    for name, cmd in sub.choices.items():
        if f"sentistream {name}" not in page:
            missing.append(f"sentistream {name}")
        for action in cmd._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt != "--help" and f"`{opt}" not in page and f" {opt}" not in page:
                    missing.append(f"{name} {opt}")
    assert not missing, f"missing from docs/cli.md: {missing}"


def test_every_http_route_is_in_the_server_pages():
    source = (ROOT / "stream" / "server" / "app.py").read_text(encoding="utf-8")
    routes = set(re.findall(r"router\.add_(?:get|post|put|delete|route)\(\s*\"(/[^\"]*)\"", source))
    assert {"/", "/offer", "/analyze", "/ws", "/healthz", "/metrics"} <= routes, routes
    pages = "".join(p.read_text(encoding="utf-8") for p in sorted((DOCS / "server").glob("*.md")))
    missing = sorted(r for r in routes if f"`GET {r}" not in pages and f"`POST {r}" not in pages)
    assert not missing, f"routes of stream/server/app.py missing from docs/server/: {missing}"
