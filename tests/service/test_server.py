"""The service under a real uvicorn server on 127.0.0.1 (in a thread): timeouts for slow or incomplete requests,
keep-alive connections that survive an error, clients that go away, /healthz while a large request is decoded."""

import base64
import http.client
import io
import json
import logging
import socket
import threading
import time
from pathlib import Path

import pytest
from fastapi import FastAPI
from PIL import Image

from dnd.service.settings import Settings

from .conftest import png, serving


@pytest.fixture(scope="module")
def settings(bundle: Path) -> Settings:
    return Settings(model_dir=bundle, threads=1, header_timeout_s=0.5, body_timeout_s=0.5, max_image_pixels=2048 * 2048)


def _closed_by_server(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        s.recv(1024)  # returns at EOF (or with an error response, then EOF); blocks while the connection is open
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_slowloris_connections_are_closed(settings: Settings) -> None:
    with serving(settings) as port:
        socks = []
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
            socks.append(s)
        time.sleep(0.3)
        for s in socks:
            s.sendall(b"X-A: b\r\n")  # trickling bytes does not reset the head timer
        assert all(_closed_by_server(s, 3.0) for s in socks)
        for s in socks:
            s.close()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)  # the server still serves
        c.request("GET", "/healthz")
        assert c.getresponse().status == 200


def test_a_body_that_stops_arriving_is_a_408(settings: Settings) -> None:
    with serving(settings) as port:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n" + b"\x89PNG"
        )
        reply = s.recv(4096).decode("latin-1")
        assert reply.startswith("HTTP/1.1 408") and "body_timeout" in reply
        s.close()


def test_a_500_keeps_the_connection_usable_and_is_logged_once(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    def break_batcher(app: FastAPI) -> None:
        async def boom(x):
            raise RuntimeError("internals")

        app.state.dnd.batcher.submit = boom

    with caplog.at_level(logging.INFO), serving(settings, break_batcher) as port:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("POST", "/predict", body=png(), headers={"content-type": "image/png"})
        r = c.getresponse()
        body = json.loads(r.read())
        assert r.status == 500 and body["error"]["request_id"] and "internals" not in json.dumps(body)
        c.request("GET", "/healthz")  # the same keep-alive connection
        assert c.getresponse().status == 200
    tracebacks = [rec for rec in caplog.records if rec.exc_info]
    assert len(tracebacks) == 1 and body["error"]["request_id"] in tracebacks[0].getMessage()


def test_a_client_that_leaves_mid_body_is_a_499_not_an_error(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO), serving(settings) as port:
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
            + b"\0" * 100
        )
        time.sleep(0.1)
        s.close()
        time.sleep(0.3)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
    assert 'dnd_requests_total{route="/predict",status="499"} 1.0' in text and 'status="500"' not in text
    assert not [rec for rec in caplog.records if rec.exc_info]


def test_healthz_answers_while_a_large_request_is_decoded(settings: Settings) -> None:
    buf = io.BytesIO()
    Image.new("L", (2048, 2048)).save(buf, "PNG")
    big = json.dumps({"images": [base64.b64encode(buf.getvalue()).decode()] * 16}).encode()
    with serving(settings) as port:
        done: dict[str, float] = {}

        def post() -> None:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            c.request("POST", "/predict", body=big, headers={"content-type": "application/json"})
            assert c.getresponse().status == 200
            done["big"] = time.perf_counter()

        t = threading.Thread(target=post)
        t.start()
        time.sleep(0.05)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("GET", "/healthz")
        assert c.getresponse().status == 200
        answered = time.perf_counter()
        t.join()
    assert answered < done["big"], "/healthz waited for the large request"
