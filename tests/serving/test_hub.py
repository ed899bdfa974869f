"""Hub support, offline: a local stand-in for the Hub's HTTP API receives what `camodet push`
uploads (and checks the card's metadata as the Hub's validator does); models load from a
prepared Hub cache with HF_HUB_OFFLINE=1 and from local folders."""

import base64
import hashlib
import json
import os
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import yaml

from camodet import Predictor
from camodet.cli import main

from ..conftest import PYTHON

hub = pytest.importorskip("huggingface_hub", reason="Hub support needs pip install 'camodet[hub]'")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPO = "someone/tiny-cod"
READ_ONLY = "someone/read-only"
BAD_TOKEN = "hf_revoked"


class StandInHub(BaseHTTPRequestHandler):
    """The four calls `push` makes, answered as huggingface.co answers them; every request and
    every committed file is recorded on the server for the test to check. BAD_TOKEN gets 401,
    a repo outside REPO's namespace 403 on creation, READ_ONLY 403 on upload."""

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        rec = self.server.record
        rec["calls"].append(self.path)
        rec["auth"].add(self.headers.get("authorization"))
        if self.headers.get("authorization") == f"Bearer {BAD_TOKEN}":
            return self.reply(401, {"error": "Invalid credentials in Authorization header"})
        if self.path == "/api/repos/create":
            req = json.loads(body)
            rec["created"] = req
            if req["organization"] != REPO.split("/")[0]:
                return self.reply(
                    403,
                    {
                        "error": f"You don't have the rights to create a model under the "
                        f'namespace "{req["organization"]}"'
                    },
                )
            return self.reply(200, {"url": f"{self.server.url}/{req['organization']}/{req['name']}"})
        if self.path == "/api/validate-yaml":
            text = json.loads(body)["content"]
            rec["metadata"] = yaml.safe_load(text.split("---")[1])  # the Hub refuses invalid YAML
            return self.reply(200, {"errors": [], "warnings": []})
        if self.path == f"/api/models/{READ_ONLY}/preupload/main":  # it exists; the token may only read it
            return self.reply(403, {"error": "You don't have the rights to write to this repository"})
        if self.path == f"/api/models/{REPO}/preupload/main":
            files = json.loads(body)["files"]
            modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            return self.reply(200, {"files": modes})
        if self.path == f"/api/models/{REPO}/commit/main":
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "header":
                    rec["message"] = item["value"]["summary"]
                elif item["key"] == "file":
                    rec["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            return self.reply(
                200, {"commitUrl": f"{self.server.url}/{REPO}/commit/{'a' * 40}", "commitOid": "a" * 40}
            )
        self.reply(404, {"error": f"the stand-in does not know {self.path}"})

    def do_HEAD(self):  # noqa: N802
        self.serve_file(body=False)

    def do_GET(self):  # noqa: N802
        self.serve_file(body=True)

    def serve_file(self, body: bool) -> None:
        """/{repo}/resolve/{revision}/{file} of the repos in server.served, with the headers and
        error codes the Hub sends; every file sent is recorded."""
        parts = self.path.split("/")
        repo, revision, name = "/".join(parts[1:3]), parts[4], "/".join(parts[5:])
        served = self.server.served.get(repo)
        error = (
            "RepoNotFound"
            if served is None
            else "RevisionNotFound"
            if revision not in ("main", served["commit"])
            else "EntryNotFound"
            if name not in served["files"]
            else None
        )
        if error:
            self.send_response(404)
            self.send_header("X-Error-Code", error)
            self.send_header("Content-Length", "0")
            return self.end_headers()
        data = served["files"][name]
        if body:
            self.server.record["downloads"].append(name)
        self.send_response(200)
        self.send_header("X-Repo-Commit", served["commit"])
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stand_in():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandInHub)
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    server.record = {"calls": [], "files": {}, "auth": set(), "downloads": []}
    server.served = {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def run_with_results(tiny_checkpoint, synth_root, tmp_path_factory):
    """A run folder holding the tiny checkpoint and, beside it, evaluate's output in eval/."""
    run = tmp_path_factory.mktemp("hub_run") / "cod-run"
    run.mkdir()
    shutil.copy(tiny_checkpoint, run / os.path.basename(tiny_checkpoint))
    assert (
        main(
            [
                "evaluate",
                str(run / os.path.basename(tiny_checkpoint)),
                "--dataset-path",
                synth_root,
                "--num-workers",
                "0",
                "--out",
                str(run / "eval"),
            ]
        )
        == 0
    )
    return run


def prepare_cache(cache, repo: str, files: dict[str, bytes]) -> None:
    """The Hub cache's layout as huggingface_hub writes it: blobs by hash, a snapshot of links, refs/main."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(b"".join(files.values())).hexdigest()
    snap = folder / "snapshots" / commit
    (folder / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    for name, data in files.items():
        blob = hashlib.sha256(data).hexdigest()
        (folder / "blobs" / blob).write_bytes(data)
        os.symlink(os.path.join("..", "..", "blobs", blob), snap / name)


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1 for this process (huggingface_hub reads the variable once, at import)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)


def test_push_uploads_weights_config_and_card(
    run_with_results, stand_in, tiny_checkpoint, tmp_path, capsys, monkeypatch
):
    rc = main(
        [
            "push",
            str(run_with_results),
            REPO,
            "--endpoint",
            stand_in.url,
            "--token",
            "hf_test",
            "--license",
            "mit",
        ]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    rec = stand_in.record
    assert f"pushed model.safetensors, config.json, README.md to {stand_in.url}/{REPO}" in out.out
    assert rec["created"] == {
        "name": "tiny-cod",
        "organization": "someone",
        "visibility": "public",
        "type": "model",
    }
    assert rec["auth"] == {"Bearer hf_test"}
    assert sorted(rec["files"]) == ["README.md", "config.json", "model.safetensors"]
    # the card: the Hub's metadata, the evaluate table found beside the run, how to load
    assert rec["metadata"]["library_name"] == "camodet"
    assert rec["metadata"]["pipeline_tag"] == "image-segmentation"
    assert rec["metadata"]["datasets"] == ["COD10K"] and rec["metadata"]["license"] == "mit"
    card = rec["files"]["README.md"].decode()
    results = json.load(open(run_with_results / "eval" / "metrics.json"))
    assert f"| COD10K | {results['COD10K']['Sm']:.4f} |" in card and "- IoU: mean over images" in card
    assert f'Predictor.from_pretrained("{REPO}")' in card and f"camodet predict {REPO} photos/" in card
    # config.json names the checkpoint, not this machine's path
    config = json.loads(rec["files"]["config.json"])
    assert config["source"] == os.path.basename(tiny_checkpoint)
    assert config["model"]["backbone"] == "edgenext_xx_small"
    # what went up loads, from the cache, to the checkpoint's own predictions
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    prepare_cache(
        tmp_path / "cache", REPO, {k: rec["files"][k] for k in ("config.json", "model.safetensors")}
    )
    image = np.random.default_rng(4).integers(0, 255, (47, 65, 3), dtype=np.uint8)
    pulled = Predictor.from_pretrained(REPO, cache_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(pulled.predict(image), Predictor.load(str(tiny_checkpoint)).predict(image))


def test_push_problems_are_one_line(tiny_checkpoint, stand_in, tmp_path, monkeypatch, capsys):
    assert main(["push", str(tmp_path), REPO, "--endpoint", stand_in.url, "--token", "t"]) == 2
    assert "no checkpoint or export here" in capsys.readouterr().err
    assert main(["push", str(tiny_checkpoint), "not an id", "--endpoint", stand_in.url]) == 2
    assert "is not a Hub model id; use user/name" in capsys.readouterr().err
    assert main(["push", str(tiny_checkpoint), REPO, "--results", str(tmp_path), "--token", "t"]) == 2
    assert "no metrics.json there" in capsys.readouterr().err
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hub, "get_token", lambda: None)
    monkeypatch.setattr(hub.HfApi, "token", None, raising=False)
    assert main(["push", str(tiny_checkpoint), REPO, "--endpoint", stand_in.url]) == 2
    assert "not logged in to the Hugging Face Hub: run 'hf auth login'" in capsys.readouterr().err
    assert stand_in.record["calls"] == []  # nothing reached the Hub


def test_push_refused_by_the_hub_is_one_line(tiny_checkpoint, stand_in, capsys):
    cases = [
        ("other/tiny-cod", "hf_test", "403", "the token needs write access to other"),
        (READ_ONLY, "hf_test", "403", "the token needs write access to someone"),
        (REPO, BAD_TOKEN, "401", "the token was not accepted"),
    ]
    for repo, token, status, fix in cases:
        args = ["push", str(tiny_checkpoint), repo, "--endpoint", stand_in.url, "--token", token]
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"camodet: error: {repo}: "), err
        assert f"HTTP {status}" in err[0] and fix in err[0] and "HF_TOKEN" in err[0]
    assert stand_in.record["files"] == {}  # nothing was committed


def test_card_datasets_leave_out_cod10k_super_classes(run_with_results, stand_in, tmp_path, capsys):
    from camodet.serving.hub import model_card

    results = json.load(open(run_with_results / "eval" / "metrics.json"))
    results |= {"COD10K-Aquatic": results["COD10K"], "CAMO": results["COD10K"]}
    (tmp_path / "metrics.json").write_text(json.dumps(results))
    args = ["push", str(run_with_results), REPO, "--endpoint", stand_in.url, "--token", "hf_test"]
    assert main([*args, "--results", str(tmp_path)]) == 0, capsys.readouterr().err
    assert stand_in.record["metadata"]["datasets"] == ["COD10K", "CAMO"]
    card = stand_in.record["files"]["README.md"].decode()
    assert "| COD10K-Aquatic |" in card  # the table keeps the super-class rows
    # given explicitly, the names are the user's
    config = {"model": {"backbone": "edgenext_xx_small", "num_experts": 1}}
    assert "- COD10K-Aquatic" in model_card(REPO, config, None, ["COD10K-Aquatic"])


def test_from_pretrained_local_folder(tiny_checkpoint, tmp_path):
    assert main(["export", str(tiny_checkpoint), str(tmp_path / "export")]) == 0
    image = np.random.default_rng(5).integers(0, 255, (33, 50, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        Predictor.from_pretrained(str(tmp_path / "export")).predict(image),
        Predictor.load(str(tiny_checkpoint)).predict(image),
    )


def test_predict_with_hub_id_offline_from_cache(tiny_checkpoint, tmp_path):
    """`camodet predict user/name photos/` in a fresh process with HF_HUB_OFFLINE=1."""
    export = tmp_path / "export"
    assert main(["export", str(tiny_checkpoint), str(export)]) == 0
    prepare_cache(
        tmp_path / "cache", REPO, {f: (export / f).read_bytes() for f in ("config.json", "model.safetensors")}
    )
    photos = tmp_path / "photos"
    photos.mkdir()
    from PIL import Image

    image = np.random.default_rng(6).integers(0, 255, (40, 52, 3), dtype=np.uint8)
    Image.fromarray(image).save(photos / "a.png")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache"), "PYTHONPATH": ROOT}
    done = subprocess.run(
        [
            PYTHON,
            "-m",
            "camodet",
            "predict",
            REPO,
            str(photos),
            "--out",
            str(tmp_path / "out"),
            "--num-workers",
            "0",
            "--device",
            "cpu",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "a.png"))
    want = Predictor.load(str(export)).predict(image) >= 0.5
    np.testing.assert_array_equal(mask > 0, want)


def test_unknown_hub_id_offline_is_one_line(offline, tmp_path, capsys):
    assert main(["predict", "nobody/missing-model", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(
        "camodet: error: nobody/missing-model: not a local file or folder, and not in "
        "the Hugging Face cache while offline or unreachable; connect once"
    )


def test_local_paths_are_not_hub_ids(tmp_path, capsys, monkeypatch):
    from camodet.serving.fetch import is_hub_id

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert not is_hub_id("runs/best")  # a typo under a local folder, not the Hub user 'runs'

    assert is_hub_id("user/name") and is_hub_id("org/model.v2")
    assert not is_hub_id("runs/best.pth") and not is_hub_id("a/b/c") and not is_hub_id(str(tmp_path))
    assert main(["predict", "runs/missing.pth", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "runs/missing.pth: no such checkpoint or export folder, and not a Hub id" in err


def test_card_names_the_decoder_it_has():
    from camodet.serving.hub import model_card

    config = {"model": {"backbone": "tf_efficientnet_lite0", "num_experts": 1}, "img_size": 160}
    plain = model_card("someone/plain", config, None, [])
    assert "one expert per block: no mixture of experts" in plain and "1 experts" not in plain
    config["model"]["num_experts"] = 4
    assert "a mixture-of-experts decoder with 4 experts" in model_card("someone/moe", config, None, [])


@pytest.fixture
def hub_at(stand_in, monkeypatch):
    """Downloads from the stand-in Hub (huggingface_hub's endpoint constants point at it)."""
    monkeypatch.setattr(hub.constants, "ENDPOINT", stand_in.url)
    template = stand_in.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    return stand_in


def test_hub_model_downloads_and_problems_are_one_line(tiny_checkpoint, hub_at, tmp_path, capsys):
    """A camodet model downloads; a mistyped revision says so; a foreign repository is refused
    by its config.json before its weights are downloaded."""
    export = tmp_path / "export"
    assert main(["export", str(tiny_checkpoint), str(export)]) == 0
    files = {f: (export / f).read_bytes() for f in ("config.json", "model.safetensors")}
    hub_at.served[REPO] = {"commit": "c" * 40, "files": files}
    foreign = {"config.json": b'{"model_type": "bert"}', "model.safetensors": b"0" * 1000}
    hub_at.served["someone/bert"] = {"commit": "d" * 40, "files": foreign}
    cache = str(tmp_path / "cache")
    image = np.random.default_rng(8).integers(0, 255, (30, 41, 3), dtype=np.uint8)
    pulled = Predictor.from_pretrained(REPO, cache_dir=cache)
    np.testing.assert_array_equal(pulled.predict(image), Predictor.load(str(export)).predict(image))
    assert hub_at.record["downloads"] == ["config.json", "model.safetensors"]
    hub_at.record["downloads"].clear()
    from camodet.serving.fetch import HubError

    with pytest.raises(HubError, match=r"someone/bert: not a camodet model \(its config.json has format"):
        Predictor.from_pretrained("someone/bert", cache_dir=cache)
    assert hub_at.record["downloads"] == ["config.json"]  # not the weights
    with pytest.raises(HubError, match=f"{REPO}: the Hub has no revision 'mian' of this model"):
        Predictor.from_pretrained(REPO, revision="mian", cache_dir=cache)
    with pytest.raises(HubError, match="nobody/none: no such local file or folder, and no such model on"):
        Predictor.from_pretrained("nobody/none", cache_dir=cache)


def test_evaluate_records_which_weights_it_scored(run_with_results, tmp_path):
    from safetensors.torch import load_file

    from camodet.serving.export_format import weights_fingerprint

    scored = json.load(open(run_with_results / "eval" / "metrics.json"))["_scored"]
    checkpoint = run_with_results / "best_model.pth"
    assert main(["export", str(checkpoint), str(tmp_path / "export")]) == 0
    assert scored == {
        "model": str(checkpoint),
        "epoch": 1,
        "weights": "ema",
        "tta": "none",
        "weights_sha256": weights_fingerprint(load_file(tmp_path / "export" / "model.safetensors")),
    }


def test_push_attaches_only_results_of_the_weights_it_pushes(run_with_results, stand_in, tmp_path, capsys):
    """A run trained on after its evaluation (or overwritten: --overwrite keeps eval/), and an
    old evaluation without a record, do not put their numbers on this model's card."""
    import torch

    run = tmp_path / "run"
    shutil.copytree(run_with_results, run)
    ckpt = torch.load(run / "best_model.pth", weights_only=True)
    name = next(k for k, v in ckpt["model_state_dict"].items() if v.is_floating_point())
    ckpt["model_state_dict"][name] += 0.01  # the run went on: other weights, same file name
    torch.save(ckpt, run / "best_model.pth")
    (run / "old").mkdir()
    rows = json.load(open(run / "eval" / "metrics.json"))
    (run / "old" / "metrics.json").write_text(json.dumps({"COD10K": rows["COD10K"]}))  # no record
    args = ["push", str(run), REPO, "--endpoint", stand_in.url, "--token", "hf_test"]
    assert main(args) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, err
    assert err[0].startswith(f"{run / 'eval' / 'metrics.json'}: left off the card: it scored other weights")
    assert err[1].startswith(f"{run / 'old' / 'metrics.json'}: left off the card: it does not record")
    assert all("--results FILE" in line for line in err)
    assert "## Results" not in stand_in.record["files"]["README.md"].decode()
    assert main([*args, "--results", str(run / "eval")]) == 0  # the user's word
    assert "## Results" in stand_in.record["files"]["README.md"].decode()
