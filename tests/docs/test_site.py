"""The documentation site: built strictly, every internal link and anchor resolving (the README's too), and
its shared tables (error codes, configuration, endpoints) and the tests it names true to the code."""

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from coupons.api.error_codes import ErrorCode
from tests.docs.examples import DOCS, pages
from tests.helpers import ROOT, manage

README = ROOT / "README.md"
SCHEMA = DOCS / "openapi.yaml"
# Where the settings read the environment: the configuration table must list every variable they read.
SETTINGS_FILES = [ROOT / "couponsite" / "settings.py", ROOT / "couponsite" / "serve.py"]
# The settings' env_*() helpers, the server's setting() and integer_setting(), os.environ itself.
ENVIRONMENT_READ = re.compile(
    r"""(?:env_\w+\(|\b(?:integer_)?setting\(|environ(?:\.get)?[(\[])\s*["']([A-Z][A-Z0-9_]+)["']"""
)
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def table_rows(page, first_header):
    """The rows (as lists of cells) of the page's Markdown table whose first header cell is `first_header`."""
    lines = (DOCS / page).read_text().split("\n")
    start = next(index for index, line in enumerate(lines) if re.match(rf"^\|\s*{re.escape(first_header)}\s*\|", line))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def generated_schema(path):
    # The schema documents the default settings: API_KEYS_REQUIRED adds 401/403 to every operation.
    result = manage("spectacular", "--validate", "--fail-on-warn", "--file", str(path), API_KEYS_REQUIRED=None)
    assert result.returncode == 0, result.stderr
    return path.read_text()


def test_the_committed_openapi_schema_is_the_one_the_service_generates(tmp_path):
    assert SCHEMA.read_text() == generated_schema(tmp_path / "openapi.yaml"), (
        "docs/openapi.yaml differs from what the service generates: run `make docs` and commit it"
    )


# The strict build, and every link of the site ------------------------------------------------------------


def build(root, site_dir):
    """`mkdocs build --strict` of the project at `root`, as `make docs` runs it."""
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": str(Path(sys.executable).parent), "NO_MKDOCS_2_WARNING": "1"},
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built strictly: any warning (a link to a missing page, file or anchor, a page left out of
    the nav) fails."""
    site_dir = tmp_path_factory.mktemp("site")
    result = build(ROOT, site_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    return site_dir


@pytest.mark.parametrize(
    "addition, warning",
    [
        ("[the codes](client-guide.md#no-such-anchor)", "does not contain an anchor '#no-such-anchor'"),
        ("[a page](no-such-page.md)", "not found among documentation files"),
    ],
    ids=["a missing anchor", "a missing page"],
)
def test_a_broken_link_fails_the_strict_build(addition, warning, tmp_path):
    shutil.copy(ROOT / "mkdocs.yml", tmp_path)
    shutil.copytree(DOCS, tmp_path / "docs")
    with (tmp_path / "docs" / "index.md").open("a") as index:
        index.write(f"\n{addition}\n")

    result = build(tmp_path, tmp_path / "site")

    assert result.returncode != 0
    assert warning in result.stdout + result.stderr


def test_a_page_left_out_of_the_nav_fails_the_strict_build(tmp_path):
    shutil.copy(ROOT / "mkdocs.yml", tmp_path)
    shutil.copytree(DOCS, tmp_path / "docs")
    (tmp_path / "docs" / "orphan.md").write_text("# Orphan\n")

    result = build(tmp_path, tmp_path / "site")

    assert result.returncode != 0
    assert "orphan.md" in result.stdout + result.stderr


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.links = set(), []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if attributes.get("id"):
            self.ids.add(attributes["id"])
        for name in ("href", "src"):
            if attributes.get(name) is not None:
                self.links.append(attributes[name])


def _parse(html_file):
    parser = _Links()
    parser.feed(html_file.read_text())
    return parser


def _target(site_dir, base, link):
    """(file, fragment) a relative link of `base` (an HTML file of the site) leads to, or None if external."""
    parts = urlsplit(link)
    if parts.scheme or parts.netloc or link.startswith("data:"):
        return None
    if not parts.path:
        path = base
    elif parts.path.startswith("/"):  # the 404 page's links, from the site's root: it is served at any depth
        path = (site_dir / unquote(parts.path).lstrip("/")).resolve()
    else:
        path = (base.parent / unquote(parts.path)).resolve()
    if path.is_dir():
        path = path / "index.html"
    return path, unquote(parts.fragment)


def _broken(site_dir, base, links, parsed):
    broken = []
    for link in links:
        target = _target(site_dir, base, link)
        if target is None:
            continue
        path, fragment = target
        if not path.is_file() or not path.resolve().is_relative_to(site_dir.resolve()):
            broken.append(f"{link}: no such file in the site")
        elif fragment and path.suffix == ".html":
            if path not in parsed:
                parsed[path] = _parse(path)
            if fragment not in parsed[path].ids:
                broken.append(f"{link}: no element with id {fragment!r}")
    return broken


def test_the_site_builds_strictly_with_every_page_in_its_nav(site):
    built = {path.relative_to(site).as_posix() for path in site.rglob("index.html")}
    for page in DOCS.rglob("*.md"):
        name = page.relative_to(DOCS).with_suffix("").as_posix()
        assert ("index.html" if name == "index" else f"{name}/index.html") in built, page
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    assert "getting-started.md" in str(nav) and "api-reference.md" in str(nav)


def test_every_link_of_the_site_resolves(site):
    parsed = {path.resolve(): _parse(path) for path in site.rglob("*.html")}
    broken = {}
    for path, parser in list(parsed.items()):
        found = _broken(site, path, parser.links, parsed)
        if found:
            broken[str(path.relative_to(site.resolve()))] = found
    assert broken == {}


def test_every_link_of_the_readme_resolves(site):
    """README's links into docs/ lead to pages and anchors of the built site; its other links to files."""
    parsed = {}
    broken = []
    for link in MARKDOWN_LINK.findall(README.read_text()):
        parts = urlsplit(link)
        if parts.scheme:
            continue
        path = (ROOT / unquote(parts.path)).resolve()
        if not path.exists():
            broken.append(f"{link}: no such file")
        elif path.is_relative_to(DOCS) and path.suffix == ".md":
            name = path.relative_to(DOCS).with_suffix("").as_posix()
            page = site / ("index.html" if name == "index" else f"{name}/index.html")
            broken += _broken(site, page, [f"#{parts.fragment}"] if parts.fragment else [], parsed)
    assert broken == []


def test_the_link_check_finds_a_missing_file_or_anchor(site):
    index = site / "index.html"
    assert _broken(site, index, ["getting-started/#start-the-service", "img/admin/coupon-list.png"], {}) == []
    assert _broken(site, index, ["getting-started/#no-such-anchor"], {}) == [
        "getting-started/#no-such-anchor: no element with id 'no-such-anchor'"
    ]
    assert _broken(site, index, ["img/admin/no-such.png"], {}) == ["img/admin/no-such.png: no such file in the site"]


def test_the_api_reference_is_rendered_from_the_schema(site):
    reference = re.sub(r"<[^>]+>", "", (site / "api-reference" / "index.html").read_text())
    schema = yaml.safe_load(SCHEMA.read_text())
    for path, operations in schema["paths"].items():
        for method in operations:
            assert f"{method.upper()} {path}" in reference, (method, path)


# The shared tables, true to the code --------------------------------------------------------------------


def test_the_error_codes_table_lists_exactly_the_error_codes():
    rows = table_rows("client-guide.md", "code")
    assert [row[0].strip("`") for row in rows] == [code.value for code in ErrorCode]


def test_the_configuration_table_lists_every_variable_the_settings_read():
    documented = set()
    for row in table_rows("operator-guide.md", "variable"):
        documented |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", row[0]))
    read = {name for path in SETTINGS_FILES for name in ENVIRONMENT_READ.findall(path.read_text())}
    assert read, "no variable found: has the way the settings read the environment changed?"
    assert read - documented == set(), "read by the settings, missing from docs/operator-guide.md#configuration"
    assert documented - read == set(), "in docs/operator-guide.md#configuration, read by no setting"


def test_the_endpoints_table_lists_every_operation_of_the_schema():
    documented = set()
    for row in table_rows("client-guide.md", "request"):
        documented |= set(re.findall(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`?\s]*)", row[0]))
    schema = yaml.safe_load(SCHEMA.read_text())
    operations = {(method.upper(), path) for path, methods in schema["paths"].items() for method in methods}
    assert operations - documented == set(), "in the schema, missing from docs/client-guide.md#endpoints"


def test_every_test_the_pages_name_exists():
    test_sources = "\n".join(path.read_text() for path in (ROOT / "tests").rglob("*.py"))
    missing = []
    for page in pages():
        text = page.read_text()
        for path in set(re.findall(r"`(tests/[\w/.]+)`", text)) | set(re.findall(r"\b(tests/[\w/]+\.py)\b", text)):
            if not (ROOT / path).exists():
                missing.append(f"{page.name}: {path}")
        for name in set(re.findall(r"`(test_\w+)", text)):
            if not re.search(rf"\b(def|class) {re.escape(name.rstrip('_'))}", test_sources):
                missing.append(f"{page.name}: {name}")
    assert missing == []


def test_the_readme_is_short():
    assert len(README.read_text().splitlines()) <= 200
