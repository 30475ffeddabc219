"""The documentation: the API reference (mkdocs.yml) builds offline and without a warning from the
docstrings, holds the public API and no reStructuredText left raw; ``help()`` shows the same
docstrings. The build is skipped when mkdocs and mkdocstrings are not installed (the ``docs``
extra has them)."""

from __future__ import annotations

import html
import pydoc
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Anchors the reference must have: one per documented object (mkdocstrings ids are the paths).
DOCUMENTED = [
    "rwkvcpp.model.Model",
    "rwkvcpp.model.Model.generate",
    "rwkvcpp.model.Model.create_completion",
    "rwkvcpp.model.Model.create_chat_completion",
    "rwkvcpp.model.Model.chat",
    "rwkvcpp.model.Model.eval_batch",
    "rwkvcpp.model.Model.save_state",
    "rwkvcpp.model.Model.load_state",
    "rwkvcpp.model.Model.load_tuned_state",
    "rwkvcpp.model.RWKVError",
    "rwkvcpp.generate.Generator",
    "rwkvcpp.generate.Generation",
    "rwkvcpp.sampling.SamplingParams",
    "rwkvcpp.batch.BatchGenerator",
    "rwkvcpp.state.save_state",
    "rwkvcpp.state.StateFileError",
    "rwkvcpp.tokenizer.Tokenizer",
    "rwkvcpp.conversion.pipeline.convert",
    "rwkvcpp.quantization.quantize",
    "rwkvcpp.constrain.Grammar",
    "rwkvcpp.hub.resolve",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                             "-d", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def page_text(page: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


def test_the_api_reference_documents_the_public_api(site: Path) -> None:
    page = (site / "api" / "index.html").read_text()
    missing = [name for name in DOCUMENTED if f'id="{name}"' not in page]
    assert not missing, f"not in the API reference: {missing}"
    text = page_text(site / "api" / "index.html")
    assert "An RWKV model loaded from an rwkv.cpp .bin file." in text  # Model's docstring
    assert "OpenAI's chat completion" in text  # an inherited method's


def test_docstrings_render_without_raw_restructuredtext(site: Path) -> None:
    text = page_text(site / "api" / "index.html")
    raw = re.findall(r":(?:class|meth|func|mod|attr|data):`[^`]*`|``\w", text)
    assert not raw, raw[:5]


def test_the_site_loads_nothing_from_the_network(site: Path) -> None:
    remote = []
    for page in site.rglob("*"):
        if page.suffix in (".html", ".css", ".js"):
            text = page.read_text(errors="replace")
            remote += re.findall(r"""<(?:script|link|img)\b[^>]*(?:src|href)=["'](?:https?:)?//[^"']+""", text)
            remote += re.findall(r"""@import\s+url\(["']?(?:https?:)?//[^)]+""", text)
    assert not remote, remote[:5]


def test_help_shows_the_docstrings() -> None:
    import rwkvcpp
    from rwkvcpp.sampling import SamplingParams

    model_help = pydoc.render_doc(rwkvcpp.Model, renderer=pydoc.plaintext)
    assert "An RWKV model loaded from an rwkv.cpp ``.bin`` file." in model_help
    assert "create_chat_completion(self, messages" in model_help  # inherited, with its signature
    assert "Evaluates one token. Returns ``(logits, new_state)``" in model_help
    params_help = pydoc.render_doc(SamplingParams, renderer=pydoc.plaintext)
    assert "Settings for choosing tokens." in params_help
    assert re.search(r"temperature: '?float'? = 1\.0", params_help)
