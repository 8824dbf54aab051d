"""The registry client against the OCI distribution-spec and what skopeo and containerd do there.

The real docker-registry where it answers; a FaultProxy in front of it where the answer has to be
one docker-registry does not give (a tags page's Link with more parameters than its own).
"""
import json
import subprocess

import pytest

from conftest import require_tool
from registryfixture import FaultProxy, reg, registry_env  # noqa: F401

from lamina.registry import list_tags


def _skopeo_tags(host, repo):
    proc = subprocess.run([require_tool("skopeo"), "list-tags", "--tls-verify=false", f"docker://{host}/{repo}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return sorted(json.loads(proc.stdout)["Tags"])


@pytest.mark.parametrize("link", [
    '</v2/paged/tags/list?last=1>; type="application/json"; rel="next"',
    '</v2/paged/tags/list?last=1>; REL="Next"',
    '</v2/paged/tags/list?last=1>; rel="last next"',
    '</v2/paged/tags/list?last=1>; rel=next; title="a, b"',
], ids=["param-before-rel", "rel-in-capitals", "rel-list", "title-with-a-comma"])
def test_a_tags_page_link_is_read_as_rfc_8288_says(reg, registry_env, link):  # noqa: F811
    """A Link's parameters may come in any order, its ``rel`` is a list of case-insensitive
    relation types (RFC 8288 section 3.3): lamina took the next page only from ``<URL>; rel="next"``
    as docker-registry writes it, and any other spelling ended the listing at its first page,
    without a word.  skopeo follows each of these to the second page."""
    front = FaultProxy(reg.host)
    try:
        front.add("respond", method="GET", path="last=1", times=None,
                  body=json.dumps({"name": "paged", "tags": ["2"]}).encode(),
                  headers={"Content-Type": "application/json"})
        front.add("respond", method="GET", path="/tags/list", times=None,
                  body=json.dumps({"name": "paged", "tags": ["1"]}).encode(),
                  headers={"Content-Type": "application/json", "Link": link})
        assert _skopeo_tags(front.host, "paged") == ["1", "2"]
        assert list_tags(f"{front.host}/paged") == ["1", "2"]
    finally:
        front.stop()


@pytest.mark.parametrize("link", [
    '</v2/paged/tags/list?last=1>; rel="prev"',
    '</v2/paged/tags/list?last=1>; rel="nextpage"',
    '</v2/paged/tags/list?last=1>; title="rel=next"',
])
def test_a_tags_page_link_that_is_no_next_page_ends_the_listing(reg, registry_env, link):  # noqa: F811
    """Only a link whose relation types hold ``next`` is the next page (skopeo follows the first
    link of any relation, so a ``prev`` pages back and forth for ever)."""
    front = FaultProxy(reg.host)
    try:
        front.add("respond", method="GET", path="last=1", times=None,
                  body=json.dumps({"name": "paged", "tags": ["2"]}).encode(),
                  headers={"Content-Type": "application/json"})
        front.add("respond", method="GET", path="/tags/list", times=None,
                  body=json.dumps({"name": "paged", "tags": ["1"]}).encode(),
                  headers={"Content-Type": "application/json", "Link": link})
        assert list_tags(f"{front.host}/paged") == ["1"]
        assert not front.requests_for("last=1")
    finally:
        front.stop()
