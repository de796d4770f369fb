"""Sphinx extension that serves vega, vega-lite and vega-embed from the built book itself.

Altair's default HTML output loads these libraries from a CDN, so a book read offline shows no
chart. This extension writes the JavaScript bundle that ships inside the ``vl-convert-python``
package to ``_static/lrstudy-vega.js`` and loads it on every page; charts drawn with the
``lrstudy_book`` renderer of ``lrstudy.charts`` then call ``vegaEmbed`` from that bundle.

Enable it in ``_config.yml`` with ``sphinx: extra_extensions: [lrstudy.sphinx_vega]``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

BUNDLE_NAME = "lrstudy-vega.js"
BUILD_VARIABLE = "LRSTUDY_BOOK_BUILD"


def write_bundle(folder: Path) -> Path:
    """Write the vega + vega-lite + vega-embed bundle of vl-convert into ``folder``; return its path."""
    import vl_convert

    # The bundle declares top-level names such as `_`, and Sphinx's doctools.js declares `_` too, so the
    # bundle as it is fails with "Identifier '_' has already been declared". Inside a function its names
    # stay local, and it still sets window.vegaEmbed, window.vega and window.vegaLite.
    bundle = vl_convert.javascript_bundle()
    path = Path(folder) / BUNDLE_NAME
    path.write_text(f"(function () {{\n{bundle}\n}})();\n", encoding="utf-8")
    return path


def _add_bundle(app) -> None:
    folder = Path(tempfile.mkdtemp(prefix="lrstudy-vega-"))
    write_bundle(folder)
    app.config.html_static_path.append(str(folder))
    app.add_js_file(BUNDLE_NAME)


def setup(app) -> dict:
    """Register the extension with Sphinx.

    It also sets ``LRSTUDY_BOOK_BUILD=1`` in this process's environment, which the kernels that
    execute the pages inherit, so ``lrstudy.charts.enable_book_renderer`` can detect that it runs in a build.
    """
    os.environ[BUILD_VARIABLE] = "1"
    app.connect("builder-inited", _add_bundle)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
