"""The repository settings that readers and CI depend on: one repository URL, pinned packages."""

import re
from importlib import metadata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))


def _repo_slug() -> str:
    url = CONFIG["repository"]["url"].rstrip("/")
    m = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+)", url)
    assert m, f"repository.url in _config.yml is not a GitHub repository URL: {url!r}"
    return m.group(1)


def _sources():
    for pattern in ("README.md", "_config.yml", "chapters/**/*.md", "notebooks/*.ipynb"):
        yield from sorted(ROOT.glob(pattern))


def test_one_repository_url():
    """Every Binder/GitHub link to the book's repository agrees with _config.yml's repository.url."""
    slug = _repo_slug()
    branch = CONFIG["repository"].get("branch", "main")
    bad = []
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"mybinder\.org/v2/gh/([\w.-]+/[\w.-]+)/([\w.-]+)", text):
            if (m.group(1), m.group(2)) != (slug, branch):
                bad.append(f"{path.relative_to(ROOT)}: {m.group(0)}")
        for m in re.finditer(r"github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?(?=[/\s)\"'#?]|$)", text):
            owner = m.group(1).split("/")[0]
            if owner == slug.split("/")[0] and m.group(1) != slug:
                bad.append(f"{path.relative_to(ROOT)}: {m.group(0)}")
    assert not bad, f"links that disagree with repository.url ({slug}@{branch}):\n" + "\n".join(bad)


def test_no_colab_button():
    """Colab would start without physgrad and the pinned packages, so the book offers Binder only."""
    assert not CONFIG.get("launch_buttons", {}).get("colab_url")


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"constraints.txt: {line!r} is not pinned with =="
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_requirements_apply_the_constraints():
    req = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    assert "-c constraints.txt" in [ln.strip() for ln in req]
    pins = _constraints()
    for name in ("torch", "numpy", "scipy", "matplotlib", "jupyter-book", "sphinx", "myst-nb",
                 "nbval", "ipywidgets", "pytest"):
        assert name in pins, f"{name} is not pinned in constraints.txt"


@pytest.mark.parametrize("name", ["torch", "numpy", "scipy", "matplotlib", "myst-nb", "nbval"])
def test_installed_versions_match_the_pins(name):
    """The committed notebook outputs were made with these versions; another version is the
    first thing to suspect when nbval reports a differing number."""
    pinned = _constraints()[name]
    installed = metadata.version(name)
    # a local version label (torch's "+cpu") is not part of the pin
    assert installed.split("+")[0] == pinned.split("+")[0], (
        f"{name} {installed} is installed but constraints.txt pins {pinned}: "
        "run `pip install -r requirements.txt`")
