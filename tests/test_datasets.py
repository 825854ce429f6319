"""``python -m posinfo.datasets fetch`` against a local HTTP server serving a zip made here:
checksums, resumed downloads, the unpacked layout, the offline message, and data=duts."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import socket
import threading
import time
import zipfile

import pytest
from PIL import Image

from posinfo import datasets
from posinfo.errors import PosinfoError


def _archive() -> bytes:
    """A miniature DUTS-TR.zip: 5 images in the image folder, masks and a readme beside them.
    Stored without compression, with noise images, so its bytes are many and a cut is mid-file."""
    import numpy as np

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for i in range(5):
            img = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(img, "PNG")
            z.writestr(f"DUTS-TR/DUTS-TR-Image/img_{i}.png", img.getvalue())
            z.writestr(f"DUTS-TR/DUTS-TR-Mask/img_{i}.png", img.getvalue())
        z.writestr("DUTS-TR/readme.txt", "not an image")
        z.writestr("DUTS-TR/DUTS-TR-Image/Thumbs.db", "not an image either")
        z.writestr("DUTS-TR/DUTS-TR-Image/", "")
    return buf.getvalue()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves the server's ``payload`` at any path, honouring ``Range: bytes=N-`` (206), and
    records every request's method and Range header."""

    def _send(self, body: bool) -> None:
        data, rng = self.server.payload, self.headers.get("Range")
        self.server.requests.append((self.command, rng))
        start = int(rng.removeprefix("bytes=").rstrip("-")) if rng else 0
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if body:
            self.wfile.write(data[start:])

    def do_GET(self):
        self._send(True)

    def do_HEAD(self):
        self._send(False)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A threaded HTTP server on 127.0.0.1 (a free port), shut down after the test, and in any
    case after 60 s, so that a hung test cannot leave it running."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.payload, httpd.requests = _archive(), []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    guard = threading.Timer(60, httpd.shutdown)
    guard.daemon = True
    guard.start()
    yield httpd
    guard.cancel()
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def _use(monkeypatch, url: str, md5: str | None) -> datasets.Archive:
    archive = dataclasses.replace(datasets.CATALOGUE["duts"][0], url=url, md5=md5)
    monkeypatch.setitem(datasets.CATALOGUE, "duts", (archive,))
    return archive


def _url(httpd) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}/duts/download/DUTS-TR.zip"


def test_fetch_verifies_unpacks_only_the_images_and_prints_the_overrides(server, monkeypatch, tmp_path, capsys):
    _use(monkeypatch, _url(server), hashlib.md5(server.payload).hexdigest())
    assert datasets.main(["fetch", "duts", "--to", str(tmp_path)]) == 0
    images = tmp_path / "DUTS-TR" / "images"
    assert sorted(p.name for p in images.iterdir()) == [f"img_{i}.png" for i in range(5)]  # no masks, no readme
    assert not (tmp_path / "DUTS-TR" / "images.unpacking").exists()
    record = datasets._records(tmp_path)["DUTS-TR.zip"]
    assert record["sha256"] == hashlib.sha256(server.payload).hexdigest() and record["bytes"] == len(server.payload)
    out = capsys.readouterr().out
    assert f"{images}: 5 images; verified against the MD5 published by" in out
    # no test set fetched: the command says what is missing instead of a sweep it cannot run
    assert f"python -m posinfo.datasets fetch duts --to {tmp_path}" in out
    (tmp_path / "PASCAL-S" / "images").mkdir(parents=True)
    assert datasets.overrides(tmp_path) == [
        f"POSINFO_DATA_DIR={tmp_path} python sweep.py -m experiment=table1 data=duts",
        f"python sweep.py -m experiment=table1 data=folder data.train_dir={images} "
        f"data.test_dir={tmp_path / 'PASCAL-S' / 'images'}"]
    # a second fetch finds the folder and neither downloads nor unpacks again
    n = len(server.requests)
    assert datasets.fetch(["duts"], tmp_path) == {"DUTS-TR/images": {"images": 5, "verified": ""}}
    assert len(server.requests) == n


def test_a_checksum_mismatch_unpacks_nothing_and_names_both_sums(server, monkeypatch, tmp_path):
    _use(monkeypatch, _url(server), "0" * 32)
    with pytest.raises(PosinfoError) as e:
        datasets.fetch(["duts"], tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and f"MD5 {hashlib.md5(server.payload).hexdigest()} does not match" in msg
    assert "0" * 32 in msg and f"--sha256 DUTS-TR.zip={hashlib.sha256(server.payload).hexdigest()}" in msg
    assert not (tmp_path / "DUTS-TR").exists() and (tmp_path / "downloads" / "DUTS-TR.zip.rejected").is_file()
    # the user's pin decides alone: a wrong one is refused, the right one accepted despite the MD5
    with pytest.raises(PosinfoError, match="does not match the --sha256 pin"):
        datasets.fetch(["duts"], tmp_path, {"DUTS-TR.zip": "f" * 64})
    sha = hashlib.sha256(server.payload).hexdigest()
    assert datasets.fetch(["duts"], tmp_path, {"DUTS-TR.zip": sha})["DUTS-TR/images"]["images"] == 5


def test_a_partial_download_resumes_with_a_range_request(server, monkeypatch, tmp_path):
    _use(monkeypatch, _url(server), hashlib.md5(server.payload).hexdigest())
    cut = len(server.payload) // 3
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "DUTS-TR.zip.part").write_bytes(server.payload[:cut])
    assert datasets.fetch(["duts"], tmp_path)["DUTS-TR/images"]["images"] == 5
    assert ("GET", f"bytes={cut}-") in server.requests and ("GET", None) not in server.requests
    assert (tmp_path / "downloads" / "DUTS-TR.zip").read_bytes() == server.payload
    assert not (tmp_path / "downloads" / "DUTS-TR.zip.part").exists()


def test_offline_fails_at_once_in_one_line_and_a_file_placed_by_hand_is_used(server, monkeypatch, tmp_path, capsys):
    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/duts/download/DUTS-TR.zip"
        _use(monkeypatch, url, hashlib.md5(server.payload).hexdigest())
        t0 = time.monotonic()
        assert datasets.main(["fetch", "duts", "--to", str(tmp_path)]) == 2
        assert time.monotonic() - t0 < 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"posinfo: error: cannot reach {url} (URLError: ")
    assert f"put it in {tmp_path / 'downloads'}/ under that name" in err and "DUTS-TR.zip" in err
    assert not (tmp_path / "downloads").exists() and not (tmp_path / "DUTS-TR").exists()
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "DUTS-TR.zip").write_bytes(server.payload)
    assert datasets.fetch(["duts"], tmp_path)["DUTS-TR/images"]["images"] == 5  # no network needed


def test_data_duts_points_at_the_fetched_folders_and_says_how_to_fetch_them(make_cfg, monkeypatch, tmp_path):
    from posinfo.preflight import job_problems

    monkeypatch.setenv("POSINFO_DATA_DIR", str(tmp_path / "data"))
    cfg = make_cfg("data=duts", "backbone=posenet")
    assert cfg.data.name == "folder" and cfg.data.train_dir == str(tmp_path / "data" / "DUTS-TR" / "images")
    assert cfg.data.test_dir == str(tmp_path / "data" / "PASCAL-S" / "images")
    assert job_problems(cfg) == [
        f"data.train_dir={cfg.data.train_dir}: no such folder: fetch it with `python -m posinfo.datasets fetch duts "
        f"--to {tmp_path / 'data'}` (or set POSINFO_DATA_DIR to where you fetched it)",
        f"data.test_dir={cfg.data.test_dir}: no such folder: fetch it with `python -m posinfo.datasets fetch pascal-s "
        f"--to {tmp_path / 'data'}` (or set POSINFO_DATA_DIR to where you fetched it)"]
    for folder in (cfg.data.train_dir, cfg.data.test_dir):
        (tmp_path / folder).mkdir(parents=True)
    assert job_problems(cfg) == []
