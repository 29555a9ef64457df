"""Render a :class:`~bench.report.document.Document` as ONE self-contained HTML file.

Images are embedded as base64 PNG, CSS and the few lines of table-sorting JS are
inline, nothing is fetched from a network: the file reads the same offline, from
an e-mail attachment or years later. Every value goes through jinja2 with
autoescape on, so class names or error messages containing HTML are shown, not run.
"""
from __future__ import annotations

import base64
from datetime import datetime, timezone
from pathlib import Path

import jinja2

from .. import __version__
from .document import Document
from .labels import FAMILY_TITLES, Palette, css_token

TEMPLATES = Path(__file__).with_name("templates")


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def display_width(png: bytes, dpi: int = 150, css_dpi: int = 100) -> int:
    """CSS width of a figure PNG: rendered at ``dpi``, shown as if at ``css_dpi`` (sharp on HiDPI)."""
    width = int.from_bytes(png[16:20], "big")  # IHDR
    return int(round(width * css_dpi / dpi))


def _file_uri(path: Path) -> str | None:
    try:
        return data_uri(Path(path).read_bytes())
    except OSError:
        return None


def _environment() -> jinja2.Environment:
    # autoescape everything; a lenient Undefined so an older analysis JSON lacking a key still renders
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["data_uri"] = data_uri
    env.filters["display_width"] = display_width
    env.filters["css"] = css_token
    env.filters["family_title"] = lambda f: FAMILY_TITLES.get(f, f)
    return env


def _thumbs(block_value: dict, key: str) -> dict:
    """Embed every thumbnail a gallery/retrieval block references: relative path -> data URI."""
    d = Path(block_value["dir"])
    out = {}
    if key == "items":
        paths = [it.get("thumb") for it in block_value["items"]]
    else:
        paths = []
        for q in block_value["queries"]:
            paths.append(q.get("thumb"))
            for sp in q.get("spaces", []):
                paths += [nb.get("thumb") for nb in sp.get("neighbours", [])]
    for p in paths:
        if p and p not in out:
            uri = _file_uri(d / p)
            if uri:
                out[p] = uri
    return out


def render(doc: Document, template: str = "report.html") -> str:
    """The HTML text of a document."""
    thumbs = {}
    for s in doc.sections:
        for b in s.blocks:
            if b.kind == "gallery":
                thumbs.update(_thumbs(b.value, "items"))
            elif b.kind == "retrieval":
                thumbs.update(_thumbs(b.value, "queries"))
    colors = Palette().css()
    return _environment().get_template(template).render(
        doc=doc, thumbs=thumbs, family_colors=colors, version=__version__,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def write(doc: Document, path: Path, template: str = "report.html") -> Path:
    path = Path(path)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(render(doc, template), encoding="utf-8")
    tmp.replace(path)
    return path
