"""finetune serve: the dynamic batcher (fast, pure logic), the app in process, and a real uvicorn subprocess."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from finetune.deploy.serve.batcher import Batcher, QueueFull  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _run(coro):
    return asyncio.run(coro)


def test_batcher_groups_requests_within_max_wait_up_to_max_batch():
    sizes = []

    def runner(images, tta):
        return images.sum((1, 2, 3), keepdim=False)[:, None] * (2 if tta else 1)

    async def go():
        b = Batcher(runner, max_batch=4, max_wait_ms=50, on_batch=lambda n, s: sizes.append(n))
        await b.start()
        futures = b.submit([torch.full((1, 2, 2), float(i)) for i in range(6)], tta=False)
        out = await asyncio.gather(*futures)
        await b.stop()
        return out

    out = _run(go())
    assert [float(o[0]) for o in out] == [4.0 * i for i in range(6)]  # each image gets its own row back
    assert sizes == [4, 2]  # six images at once: a full batch, then the rest after max_wait


def test_batcher_keeps_tta_apart_and_refuses_past_its_queue():
    calls = []

    def runner(images, tta):
        calls.append((len(images), tta))
        return images.flatten(1)

    async def go():
        b = Batcher(runner, max_batch=8, max_wait_ms=20, max_queue=3)
        await b.start()
        with pytest.raises(QueueFull):
            b.submit([torch.zeros(1)] * 4, tta=False)  # all or none: nothing of it is queued
        f = b.submit([torch.zeros(1)] * 2, tta=False) + b.submit([torch.ones(1)], tta=True)
        out = await asyncio.gather(*f)
        await b.stop()
        return out

    out = _run(go())
    assert sorted(calls) == [(1, True), (2, False)] and [float(o[0]) for o in out] == [0, 0, 1]


def test_batcher_waits_no_longer_than_max_wait_for_a_lone_image():
    async def go():
        b = Batcher(lambda x, t: x.flatten(1), max_batch=32, max_wait_ms=30)
        await b.start()
        start = time.perf_counter()
        await asyncio.gather(*b.submit([torch.zeros(1)], tta=False))
        took = time.perf_counter() - start
        await b.stop()
        return took

    assert _run(go()) < 0.5


# --- the app with a tiny trained model ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from conftest import train_tiny

    return train_tiny(tmp_path_factory.mktemp("serve"))


def _photos(data: Path) -> list[Path]:
    return sorted((data / "val").rglob("*.png"))


def _expected(ckpt, photos, **kw):
    from finetune.deploy.predict import predict

    return [p.to_dict() for p in predict(ckpt, photos, top_k=2, **kw)]


def _same(served, offline):
    assert len(served) == len(offline)
    for s, o in zip(served, offline):
        assert Path(o["path"]).name == s["path"]
        assert [t["label"] for t in s["top"]] == [t["label"] for t in o["top"]]
        for a, b in zip(s["top"], o["top"]):
            assert abs(a["prob"] - b["prob"]) < 1e-4
        assert s.get("rejected") == o.get("rejected")


@pytest.mark.slow
def test_the_app_answers_as_offline_predict_and_reports_bad_images_one_by_one(tiny):
    from fastapi.testclient import TestClient

    from finetune.checkpoint import Checkpoint
    from finetune.deploy.serve.app import create_app
    from finetune.deploy.serve.settings import ServeSettings

    ckpt, data = tiny
    photos = _photos(data)
    app = create_app(ckpt, ServeSettings(engine="torch", max_images=10, max_bytes=200_000))
    with TestClient(app) as client:
        files = [("files", (p.name, p.read_bytes(), "image/png")) for p in photos]
        r = client.post("/predict", files=files, data={"top_k": "2", "reject": "0.6"})
        assert r.status_code == 200, r.text
        _same(r.json(), _expected(ckpt, photos, reject=0.6))
        body = {"images": [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()} for p in photos],
                "top_k": 2, "tta": True}
        r = client.post("/predict", json=body)
        assert r.status_code == 200
        _same(r.json(), _expected(ckpt, photos, tta=True))
        mixed = [files[0], ("files", ("notes.txt", b"not an image", "text/plain"))]
        rows = client.post("/predict", files=mixed).json()
        assert rows[0]["top"] and "error" not in rows[0] and rows[1]["top"] == [] and rows[1]["error"]
        assert client.post("/predict", files=mixed[1:]).status_code == 422  # nothing could be read
        assert client.post("/predict", files=[("files", ("big.png", b"x" * 300_000, "image/png"))]).status_code == 413
        assert client.post("/predict", files=files * 3).status_code == 413  # 12 images, at most 10
        info = client.get("/info").json()
        assert info["classes"] == ["blue", "red"] and info["engine"] == "torch"
        assert client.get("/health").json() == {"status": "ok"}
        metrics = client.get("/metrics").text
        assert 'finetune_requests_total{outcome="ok"} 3.0' in metrics and "finetune_batch_size_bucket" in metrics
        page = client.get("/").text
        assert "<script>" in page and "http://" not in page and "https://" not in page  # works offline
        assert "/predict" in client.get("/openapi.json").text
        assert info["cam"] is True
        r = client.post("/cam", files={"file": (photos[0].name, photos[0].read_bytes(), "image/png")},
                        data={"label": "red"})
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
        from finetune.deploy.cam import Explainer

        assert r.content == Explainer(Checkpoint.load(ckpt)).overlay(photos[0], 1)  # as predict --cam draws it
        assert client.post("/cam", files={"file": ("a.png", photos[0].read_bytes())},
                           data={"label": "green"}).status_code == 422
    with TestClient(create_app(ckpt, ServeSettings(engine="torch", max_pixels=100))) as client:
        r = client.post("/predict", files=files[:1])  # the fixture's photos are 32x32: over 100 pixels
        assert r.status_code == 413 and "pixels" in r.text
        assert client.post("/cam", files={"file": ("a.png", photos[0].read_bytes())}).status_code == 413


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(ckpt, cwd, *flags):
    """`finetune serve CKPT` in a subprocess on a free port, from a folder of its own; (process, url) once healthy."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's finetune
    proc = subprocess.Popen([sys.executable, "-m", "finetune", "serve", str(ckpt), "--port", str(port), *flags],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read()) from None
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the server did not answer /health in 30 s")


@pytest.fixture
def server(tiny, tmp_path):
    proc, url = _start(tiny[0], tmp_path, "--engine", "torch", "--max-wait-ms", "20")
    yield proc, url, tmp_path
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.mark.slow
def test_a_real_server_answers_concurrent_clients_as_predict_and_loses_nothing_on_sigterm(tiny, server):
    ckpt, data = tiny
    proc, url, cwd = server
    photos = _photos(data)
    offline = {Path(o["path"]).name: o for o in _expected(ckpt, photos)}

    def ask(p):
        r = httpx.post(url + "/predict", files=[("files", (p.name, p.read_bytes(), "image/png"))],
                       data={"top_k": "2"}, timeout=30)
        return r.status_code, r.json()

    with ThreadPoolExecutor(8) as pool:
        for code, rows in pool.map(ask, photos * 4):
            assert code == 200
            _same(rows, [offline[rows[0]["path"]]])
    assert 'finetune_requests_total{outcome="ok"} 32.0' in httpx.get(url + "/metrics").text
    answered, refused = [], []
    with ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(ask, p) for p in photos * 8]
        time.sleep(0.3)  # requests in flight, and more coming
        proc.send_signal(signal.SIGTERM)
        for f in futures:
            try:
                answered.append(f.result())
            except httpx.ConnectError:  # after SIGTERM new connections are refused: never accepted
                refused.append(f)
            except httpx.RemoteProtocolError as exc:  # connected, but closed before the server read a request:
                assert "without sending a response" in str(exc)  # uvicorn closes such idle connections at
                refused.append(f)  # shutdown and waits for every request it is serving; never begun, not lost
            except httpx.ReadError as exc:  # still in the kernel's listen queue, never accepted, when the server
                assert "Connection reset by peer" in str(exc)  # closed its socket: the kernel resets those (seen
                refused.append(f)  # on a loaded 2-core machine)
    # any other error (a reset in the middle of a response, a 5xx) would be an accepted request lost
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has drained
    assert answered and all(code == 200 and rows[0]["top"] for code, rows in answered), answered
    assert len(answered) + len(refused) == len(futures)
    assert os.listdir(cwd) == []  # the server wrote nothing


@pytest.mark.slow
def test_the_port_in_use_and_a_missing_model_are_one_line_errors(tiny, tmp_path):
    from conftest import invoke

    code, _, err = invoke("serve", tmp_path / "nope.pt")
    assert code == 1 and "nope.pt" in err and "Traceback" not in err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        code, _, err = invoke("serve", tiny[0], "--port", s.getsockname()[1])
    assert code == 1 and "--port" in err and "Traceback" not in err




@pytest.mark.slow
def test_a_full_queue_answers_503_with_retry_after_and_the_rest_are_served(tiny, tmp_path):
    ckpt, data = tiny
    photos = _photos(data)
    proc, url = _start(ckpt, tmp_path, "--engine", "torch", "--max-batch", "1", "--max-wait-ms", "0",
                       "--max-queue", "2", "--max-images", "2")
    pair = [("files", (p.name, p.read_bytes(), "image/png")) for p in photos[:2]]

    def ask(_):
        return httpx.post(url + "/predict", files=pair, data={"tta": "true"}, timeout=60)

    try:
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(ask, range(96)))
    finally:
        proc.kill()
        proc.wait()
    codes = [a.status_code for a in answers]
    busy = [a for a in answers if a.status_code == 503]
    assert set(codes) == {200, 503}, codes  # a queue of 2 images and 32 clients: some wait, none are lost
    assert all(a.headers["retry-after"] == "1" and "waiting" in a.json()["detail"] for a in busy)


def test_a_queue_smaller_than_one_request_is_refused_at_start():
    from finetune.deploy.serve.settings import ServeSettings
    from finetune.errors import ConfigError

    with pytest.raises(ConfigError, match="--max-queue"):
        ServeSettings(max_queue=4, max_images=8)


BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.slow
@pytest.mark.skipif(BROWSER is None, reason="no Chromium or Chrome here: install Debian's chromium (.ci/run does) "
                                            "to check the page in a real browser")
def test_the_page_in_a_real_browser_uploads_photos_and_shows_the_top_classes_and_grad_cam(tiny, server):
    sync_api = pytest.importorskip("playwright.sync_api")
    ckpt, data = tiny
    _, url, cwd = server
    photos = _photos(data)[:2]
    offline = _expected(ckpt, photos)
    problems = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which(BROWSER), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 390, "height": 1200})
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('info').textContent.includes('2 classes')")
        page.check("#cam")  # offered: the server has the .pt checkpoint and grad-cam
        page.fill("#k", "2")
        page.set_input_files("#pick", [str(p) for p in photos])
        page.wait_for_function("document.querySelectorAll('.card img.cam').length == 2", timeout=60_000)
        shown = {c.query_selector("h3").text_content(): [r.text_content() for r in c.query_selector_all(".cls")]
                 for c in page.query_selector_all(".card")}
        drawn = page.evaluate("[...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth)")
        page.screenshot(path=str(cwd.parent / "page.png"))
        browser.close()
    assert shown == {Path(o["path"]).name: [t["label"] for t in o["top"]] for o in offline}
    assert drawn and not problems, problems
