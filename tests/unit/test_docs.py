"""Documentation: relative links resolve, the notebook tables match the notebooks folder, and
every ``utils_cv`` name the docs and notebooks mention exists."""

import ast
import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "classification/README.md", "FAQ.md", "benchmarks/README.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
NOTEBOOKS = REPO / "classification" / "notebooks"
DOTTED = re.compile(r"\butils_cv(?:\.[A-Za-z_]\w*)+")
IMPORT_FROM = re.compile(r"\bfrom (utils_cv(?:\.\w+)+) import (?:\(([\w\s,]+)\)|([\w, ]+))")


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


# --- names: docs and notebooks mention only what exists ------------------------------------


def module_names(module: str) -> set[str] | None:
    """Top-level names ``module`` defines or imports (read from its source, nothing is
    imported), with ``Class.attribute`` for class bodies; None when there is no such module."""
    spec = importlib.util.find_spec(module) if module.startswith("utils_cv") else None
    if spec is None or spec.origin is None:
        return None
    names = set()
    for node in ast.parse(Path(spec.origin).read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names.update(
                    f"{node.name}.{item.name}"
                    for item in node.body
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                )
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def missing_name(dotted: str) -> str | None:
    """Why ``dotted`` (a module, or a module then attributes) does not exist; None if it does."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        module = ".".join(parts[:n])
        try:
            names = module_names(module)
        except ModuleNotFoundError:
            names = None
        if names is None:
            continue
        rest = parts[n:]
        if not rest or rest[0].startswith("__"):
            return None
        for depth in (2, 1):
            if ".".join(rest[:depth]) in names:
                return None
        return f"{module} has no {rest[0]}"
    return f"no module {dotted}"


def mentioned_names(path: Path) -> set[str]:
    """Dotted ``utils_cv...`` names and ``from utils_cv... import a, b`` names in a file."""
    text = path.read_text()
    if path.suffix == ".ipynb":
        text = "\n".join(s.encode().decode("unicode_escape") for s in re.findall(r'"(.*)"', text))
    names = set(DOTTED.findall(text))
    for module, in_parentheses, on_one_line in IMPORT_FROM.findall(text):
        imported = in_parentheses or on_one_line
        names.update(f"{module}.{name.strip()}" for name in imported.split(",") if name.strip())
    return names


def test_name_checker_finds_removed_names(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text(
        "`utils_cv.classification.train.fit_recipe` and `utils_cv.classification.model.fit`;\n"
        "from utils_cv.classification.predict import (\n    load_predictor,\n    Classifier,\n)"
    )
    names = mentioned_names(doc)
    assert names == {
        "utils_cv.classification.train.fit_recipe",
        "utils_cv.classification.model.fit",
        "utils_cv.classification.predict",
        "utils_cv.classification.predict.load_predictor",
        "utils_cv.classification.predict.Classifier",
    }
    assert missing_name("utils_cv.classification.train.fit_recipe") is None
    assert missing_name("utils_cv.classification.spec.ModelSpec.preprocess") is None
    assert missing_name("utils_cv.classification.model.fit") == (
        "utils_cv.classification has no model"
    )
    assert missing_name("utils_cv.classification.predict.Classifier") == (
        "utils_cv.classification.predict has no Classifier"
    )


@pytest.mark.parametrize(
    "doc", DOCS + sorted(str(p.relative_to(REPO)) for p in NOTEBOOKS.glob("*.ipynb"))
)
def test_docs_and_notebooks_name_only_what_exists(doc):
    problems = sorted(
        f"{name}: {why}"
        for name in mentioned_names(REPO / doc)
        if (why := missing_name(name)) is not None
    )
    assert not problems, f"{doc} mentions names that do not exist: {problems}"
