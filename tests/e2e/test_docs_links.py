"""The docs' link checker (tools/check_links.py, run by `make docs-check` and `make check`):
every relative link and #anchor of README.md, CONTRIBUTING.md and docs/*.md resolves, and a
planted broken link or anchor is caught. No Envoy needed."""

import subprocess
import sys

import envoy_config as ec

sys.path.insert(0, str(ec.REPO / "tools"))
import check_links  # noqa: E402

TOOL = ec.REPO / "tools" / "check_links.py"


def run(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_the_shipped_docs_have_no_broken_link():
    r = run()
    assert r.returncode == 0, r.stderr
    assert "0 broken" in r.stdout


def test_the_readme_and_contributing_are_checked():
    r = run()
    files = int(r.stdout.split("check_links: ")[1].split(" files")[0])
    assert files >= 3, r.stdout  # README.md, CONTRIBUTING.md and at least one docs/*.md
    assert (ec.REPO / "CONTRIBUTING.md").exists()


def planted(tmp_path, body):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## Some `code` (here)\n")
    (tmp_path / "README.md").write_text(body)
    (tmp_path / "CONTRIBUTING.md").write_text("# Contributing\n\nSee [the README](README.md#title).\n")
    return run("--root", tmp_path)


def test_good_links_and_anchors_pass(tmp_path):
    r = planted(tmp_path, "# Title\n\n## Second part\n\n[a](docs/other.md) [b](docs/other.md#some-code-here)"
                          " [c](#second-part) [d](https://example.invalid/x) [e](docs/)\n"
                          "```\n[not a link](nowhere.md)\n```\n`[nor this](nowhere.md)`\n")
    assert r.returncode == 0, r.stderr


def test_a_planted_missing_file_fails(tmp_path):
    r = planted(tmp_path, "# Title\n\nSee [the guide](docs/missing.md).\n")
    assert r.returncode == 1
    assert "README.md:3: (docs/missing.md) docs/missing.md does not exist" in r.stderr


def test_a_planted_broken_anchor_fails(tmp_path):
    r = planted(tmp_path, "# Title\n\n[x](docs/other.md#nope) and [y](#no-such-heading)\n")
    assert r.returncode == 1
    assert "no heading with anchor #nope in other.md" in r.stderr
    assert "no heading with anchor #no-such-heading in README.md" in r.stderr


def test_github_slugs():
    assert check_links.slug("Scale (`make scale`)") == "scale-make-scale"
    assert check_links.slug("Failover mechanism and timeouts") == "failover-mechanism-and-timeouts"
    assert check_links.slug("Targets (issue 5), 1 KiB objects") == "targets-issue-5-1-kib-objects"


def test_a_missing_contributing_md_fails(tmp_path):
    assert planted(tmp_path, "# Title\n").returncode == 0
    (tmp_path / "CONTRIBUTING.md").unlink()
    r = run("--root", tmp_path)
    assert r.returncode == 1 and "CONTRIBUTING.md: no such file" in r.stderr
