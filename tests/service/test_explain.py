"""POST /explain and GET /: the path picture and the page that shows it."""

from fastapi.testclient import TestClient

from ..conftest import TINY_FILTERS, TINY_LAYERS
from .conftest import png


def test_explain_draws_the_path_against_the_class_signature(client: TestClient) -> None:
    r = client.post("/explain", content=png(seed=5), headers={"content-type": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
    svg = r.text
    label = client.post("/predict", content=png(seed=5), headers={"content-type": "image/png"}).json()
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert all(f">layer {l}" in svg for l in range(TINY_LAYERS))
    assert f"&quot;{label['predictions'][0]['label']}&quot;" in svg
    assert svg.count("<rect") >= TINY_FILTERS  # one cell per filter, plus the legend
    bad = client.post("/explain", content=b"nope", headers={"content-type": "image/png"})
    assert bad.status_code == 415 and bad.json()["error"]["code"] == "not_an_image"


def test_page_and_its_files_are_served_without_external_references(client: TestClient) -> None:
    html = client.get("/")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    for ref in ("/static/app.js", "/static/style.css", "/v1/samples"):
        assert client.get(ref).status_code == 200
    text = html.text + client.get("/static/app.js").text + client.get("/static/style.css").text
    assert "http://" not in text and "https://" not in text  # no CDN, no web font
    samples = client.get("/v1/samples").json()["samples"]
    assert {s["kind"] for s in samples} == {"clean", "attacked"}
    for s in samples:
        r = client.get(s["url"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"
