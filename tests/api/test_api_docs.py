"""docs/api.md carries the HTTP reference the app's OpenAPI schema generates, and nothing stale."""

from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path

from genqueue_api import apidoc

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
REGENERATE = "genqueue api-docs --write docs/api.md"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "genqueue.cli", "api-docs", *args],
                          capture_output=True, text=True, timeout=120)


def test_docs_api_md_matches_the_served_schema() -> None:
    # A fresh process, so that the reference comes from the app exactly as `genqueue api-docs` builds it.
    run = _cli("--markdown")
    assert run.returncode == 0, run.stderr
    current = apidoc.block(DOC)
    assert current is not None, f"docs/api.md lost its reference markers; restore them and run `{REGENERATE}`"
    diff = "".join(list(difflib.unified_diff(current.splitlines(True), run.stdout.splitlines(True),
                                             "docs/api.md", "the app's schema"))[:60])
    assert current == run.stdout, f"docs/api.md is stale: run `{REGENERATE}` (from the repository root)\n{diff}"


def test_every_served_operation_and_schema_is_in_the_reference() -> None:
    schema = apidoc.served_schema()
    text = apidoc.render(schema)
    for path, ops in schema["paths"].items():
        for method in ops:
            assert f"#### `{method.upper()} {path}`" in text
    for name in schema["components"]["schemas"]:
        assert f"\n### {name}\n" in text
    # Who may call what comes from the auth dependencies, through the OpenAPI security requirement.
    assert schema["paths"]["/healthz"]["get"].get("security") is None
    assert schema["paths"]["/v1/jobs"]["post"]["security"] == [{"HTTPBearer": ["client", "admin"]}]
    assert schema["paths"]["/v1/review/claim"]["post"]["security"] == [{"HTTPBearer": ["moderator", "admin"]}]
    assert schema["paths"]["/v1/jobs/{job_id}"]["get"]["security"] == [{"HTTPBearer": []}]


SMALL = {
    "openapi": "3.1.0",
    "info": {"title": "t", "version": "1"},
    "paths": {
        "/v1/things/{thing_id}": {
            "get": {
                "tags": ["things"], "description": "One thing.",
                "security": [{"HTTPBearer": ["client", "admin"]}],
                "parameters": [
                    {"name": "thing_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1.0, "maximum": 1000, "default": 50}},
                ],
                "responses": {
                    "200": {"description": "OK", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Thing"}}}},
                    "404": {"description": "Not found", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Error"}}}},
                    "409": {"description": "Conflict", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Error"}}}},
                },
            },
        },
        "/healthz": {"get": {"tags": ["ops"], "responses": {"200": {"description": "OK"}}}},
    },
    "components": {"schemas": {
        "Thing": {"type": "object", "required": ["id"], "properties": {
            "id": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 8},
            "parent": {"anyOf": [{"$ref": "#/components/schemas/Thing"}, {"type": "null"}]},
            "kind": {"enum": ["a", "b|c"], "description": "What it is."},
        }},
        "Error": {"type": "object", "properties": {"code": {"type": "string"}}},
    }},
}


def test_render_turns_a_schema_into_tables_without_a_server() -> None:
    text = apidoc.render(SMALL)
    lines = text.splitlines()
    assert lines[0] == apidoc.BEGIN and lines[-1] == apidoc.END
    assert "#### `GET /v1/things/{thing_id}`" in lines
    assert "Access: `client` or `admin` key." in lines and "Access: no key." in lines
    assert "| `limit` | query | integer | no | ≥ 1; ≤ 1000. Default `50`. |" in lines
    assert "- **200**: `application/json` [Thing](#thing)" in lines
    assert "- **404, 409**: `application/json` [Error](#error)" in lines
    assert "| `parent` | [Thing](#thing) or null | no |  |" in lines
    assert "| `kind` | one of `a`, `b\\|c` | no | What it is. |" in lines  # a pipe cannot break the table
    assert "| `tags` | array of string | no | max items 8. |" in lines
    assert text.index("### Error") < text.index("### Thing")  # schemas in name order, whatever the input


def test_write_replaces_only_the_reference(tmp_path: Path) -> None:
    doc = tmp_path / "api.md"
    doc.write_text(f"# prose before\n\n{apidoc.BEGIN}\nstale\n{apidoc.END}\n\nprose after\n")
    assert apidoc.write(doc, apidoc.render(SMALL)) is True
    text = doc.read_text()
    assert text.startswith("# prose before\n\n") and text.endswith("\n\nprose after\n")
    assert "stale" not in text and apidoc.block(doc) == apidoc.render(SMALL)
    assert apidoc.write(doc, apidoc.render(SMALL)) is False


def test_cli_rewrites_a_stale_copy_and_refuses_a_file_without_markers(tmp_path: Path) -> None:
    copy = tmp_path / "api.md"
    copy.write_text(DOC.read_text().replace("#### `POST /v1/jobs`", "#### `POST /v1/jobz`"))
    run = _cli("--write", str(copy))
    assert run.returncode == 0 and "updated" in run.stdout, run.stderr
    assert copy.read_text() == DOC.read_text()

    bare = tmp_path / "notes.md"
    bare.write_text("# notes\n")
    run = _cli("--write", str(bare))
    assert run.returncode != 0 and "no HTTP reference markers" in run.stderr
    assert "Traceback" not in run.stderr and bare.read_text() == "# notes\n"
