"""Documentation: relative links resolve, and the notebook tables match the notebooks folder."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "classification/README.md", "FAQ.md", "benchmarks/README.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
NOTEBOOKS = REPO / "classification" / "notebooks"


def relative_links(doc: Path) -> list[str]:
    links = LINK.findall(doc.read_text())
    return [link for link in links if not re.match(r"^[a-z]+:", link) and not link.startswith("#")]


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_resolve(doc):
    path = REPO / doc
    missing = [
        link for link in relative_links(path) if not (path.parent / link.split("#")[0]).exists()
    ]
    assert not missing, f"{doc} links to missing files: {missing}"


def test_link_checker_catches_a_missing_file(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("[ok](x.md) [gone](nope.md) ![im](pic.png) [web](https://example.com)")
    assert relative_links(doc) == ["x.md", "nope.md", "pic.png"]


def test_every_notebook_is_listed_and_every_listed_notebook_exists():
    existing = {p.stem for p in NOTEBOOKS.glob("*.ipynb")}
    listed = set(
        re.findall(r"notebooks/(\d\d_\w+)\.ipynb", (REPO / "classification/README.md").read_text())
    )
    assert listed == existing
    readme_numbers = set(re.findall(r"\| \[(\d\d)_", (REPO / "README.md").read_text()))
    assert {name[:2] for name in existing if int(name[:2]) < 20} == readme_numbers
