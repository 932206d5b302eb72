"""The real huggingface_hub client against tests/fake_hub.py, and resolve_model through it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import httpx
import pytest
from huggingface_hub import constants, snapshot_download
from huggingface_hub.utils import filter_repo_objects

from actors.models.resolve import MLX_MODEL_PATTERNS
from tests.conftest import ROOT
from tests.fake_hub import DEMO_REPO, fake_hub_fixture  # noqa: F401

CUT_FILE = "model.safetensors"
CUT_AT = 100_000  # bytes of CUT_FILE sent before the fake hub hangs up (< its size)


@pytest.fixture(autouse=True)
def online(monkeypatch):
    # huggingface_hub froze HF_HUB_OFFLINE at import; these tests talk to the local fake hub.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def wanted(hub) -> list[str]:
    """The demo repo's files that snapshot_download fetches with mlx_lm's patterns."""
    files = hub.repos[DEMO_REPO].files
    return sorted(filter_repo_objects(files, allow_patterns=MLX_MODEL_PATTERNS))


def download(hub, cache_dir):
    return snapshot_download(
        DEMO_REPO,
        revision="main",
        allow_patterns=MLX_MODEL_PATTERNS,
        cache_dir=cache_dir,
        endpoint=hub.url,
    )


def assert_same_files(hub, snapshot: str) -> None:
    repo = hub.repos[DEMO_REPO]
    for path in wanted(hub):
        got = os.path.join(snapshot, path)
        assert open(got, "rb").read() == repo.files[path].local.read_bytes(), path


def test_head_answers_like_the_hub(fake_hub):
    repo = fake_hub.repos[DEMO_REPO]
    weights, config = repo.files[CUT_FILE], repo.files["config.json"]
    base = f"{fake_hub.url}/{DEMO_REPO}/resolve/main"
    with httpx.Client(timeout=10) as client:
        head = client.head(f"{base}/{CUT_FILE}")
        assert head.status_code == 200
        assert head.headers["ETag"] == f'"{weights.sha256}"'  # LFS: the content's sha256
        assert head.headers["X-Repo-Commit"] == repo.commit
        assert int(head.headers["Content-Length"]) == weights.size
        assert client.head(f"{base}/config.json").headers["ETag"] == f'"{config.blob_sha1}"'
        ranged = client.get(f"{base}/config.json", headers={"Range": "bytes=10-"})
        assert ranged.status_code == 206 and ranged.content == config.local.read_bytes()[10:]
        missing = client.head(f"{base}/nope.json")
        assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "EntryNotFound"
        gone = client.get(f"{fake_hub.url}/api/models/no-org/no-model")
        assert gone.status_code == 404 and gone.headers["X-Error-Code"] == "RepoNotFound"
    assert fake_hub.body_fetches() == 1  # HEADs are not fetches; the ranged GET is


def test_snapshot_download_fetches_each_file_once_then_hits_the_cache(fake_hub, tmp_path):
    first = download(fake_hub, tmp_path)
    assert sorted(os.listdir(first)) == wanted(fake_hub)
    assert_same_files(fake_hub, first)
    assert {path: fake_hub.fetch_count(DEMO_REPO, path) for path in wanted(fake_hub)} == {
        path: 1 for path in wanted(fake_hub)
    }
    assert fake_hub.body_fetches() == len(wanted(fake_hub))  # nothing outside the patterns

    before = len(fake_hub.requests)
    assert download(fake_hub, tmp_path) == first
    # The second run asks only which commit "main" is; every file is served from the cache.
    assert fake_hub.body_fetches() == len(wanted(fake_hub))
    assert [r[:2] for r in fake_hub.requests[before:]] == [
        ("GET", f"/api/models/{DEMO_REPO}/revision/main")
    ]


def test_a_connection_cut_mid_file_is_resumed_by_huggingface_hub(fake_hub, tmp_path):
    fake_hub.cut_after(DEMO_REPO, CUT_FILE, CUT_AT)
    snapshot = download(fake_hub, tmp_path)
    assert_same_files(fake_hub, snapshot)
    # huggingface_hub's http_get retries by itself, within the same call, after ~1 s. It keeps
    # only whole 10 MiB chunks (DOWNLOAD_CHUNK_SIZE) of a broken body, so a file cut in its first
    # chunk is fetched again from byte 0.
    assert fake_hub.fetch_count(DEMO_REPO, CUT_FILE) == 2
    assert gets_of(fake_hub, CUT_FILE) == [None, None]


def test_a_cut_past_the_first_chunk_resumes_with_a_range(fake_hub, tmp_path):
    repo_dir = tmp_path / "big"
    repo_dir.mkdir()
    (repo_dir / "config.json").write_text('{"model_type": "llama"}')
    weights = os.urandom(constants.DOWNLOAD_CHUNK_SIZE + 300_000)
    (repo_dir / CUT_FILE).write_bytes(weights)
    fake_hub.add_repo("fake-org/big", repo_dir)
    fake_hub.cut_after("fake-org/big", CUT_FILE, constants.DOWNLOAD_CHUNK_SIZE + 100_000)
    snapshot = snapshot_download(
        "fake-org/big",
        allow_patterns=MLX_MODEL_PATTERNS,
        cache_dir=tmp_path / "hub",
        endpoint=fake_hub.url,
    )
    assert open(os.path.join(snapshot, CUT_FILE), "rb").read() == weights
    # The whole chunks received are kept: the retry asks for the rest only.
    assert gets_of(fake_hub, CUT_FILE) == [None, f"bytes={constants.DOWNLOAD_CHUNK_SIZE}-"]


def gets_of(hub, path: str) -> list[str | None]:
    """The Range header of each GET of ``path``, in order."""
    return [r[2] for r in hub.requests if r[0] == "GET" and r[1].endswith("/" + path)]


RESOLVE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import mlx_lm
    from actors.models.resolve import resolve_model
    from actors.protocol.model_spec import ModelUnavailable

    path = resolve_model(sys.argv[1])
    model, tokenizer = mlx_lm.load(str(path))
    try:
        resolve_model("no-such-org/no-such-model")
        missing = "downloaded?"
    except ModelUnavailable as error:
        missing = str(error)
    print(json.dumps({"path": str(path), "tokens": tokenizer.encode("hello"), "missing": missing}))
    """
)


@pytest.mark.e2e
def test_resolve_model_downloads_from_hf_endpoint_into_hf_home(fake_hub, tmp_path):
    # HF_ENDPOINT and HF_HOME are read when huggingface_hub is imported: a fresh process.
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    env.pop("TRANSFORMERS_OFFLINE", None)
    env.update(HF_ENDPOINT=fake_hub.url, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_XET="1")
    done = subprocess.run(
        [sys.executable, "-c", RESOLVE_SCRIPT, DEMO_REPO],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["path"].startswith(str(tmp_path / "hf" / "hub" / "models--fake-org--demo-tiny"))
    assert_same_files(fake_hub, result["path"])
    assert result["tokens"], "the downloaded tokenizer encodes text"
    assert fake_hub.body_fetches() == len(wanted(fake_hub))
    assert "(no such repository, or it is private)" in result["missing"]
