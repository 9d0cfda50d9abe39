"""POST /admin/reload: the key, and no request dropped while the bundle is swapped."""

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dnd.service.settings import Settings

from ..conftest import write_detector_bundle
from .conftest import client_for, png


def test_reload_needs_key_and_drops_nothing_under_load(bundle: Path, tmp_path: Path) -> None:
    live = tmp_path / "live"
    shutil.copytree(bundle, live)
    off = client_for(Settings(model_dir=live))
    assert off.post("/admin/reload").status_code == 404  # no key configured: route disabled
    off.__exit__(None, None, None)
    c = client_for(Settings(model_dir=live, api_key="s3cret", threads=1, max_wait_ms=2))
    assert c.post("/admin/reload").status_code == 401
    assert c.post("/admin/reload", headers={"x-api-key": "wrong"}).status_code == 401
    old = c.get("/v1/model").json()["weights_sha256"]
    write_detector_bundle(live, seed=1)  # new weights + profiles, as after retraining and `dnd profiles`

    def call(i: int):
        if i == 50:
            return c.post("/admin/reload", headers={"x-api-key": "s3cret"})
        return c.post("/predict", content=png(seed=i), headers={"content-type": "image/png"})

    with ThreadPoolExecutor(16) as pool:
        rs = list(pool.map(call, range(120)))
    assert [r.status_code for r in rs] == [200] * 120
    assert rs[50].json()["previous"]["weights_sha256"] == old
    assert c.get("/v1/model").json()["weights_sha256"] != old
    c.__exit__(None, None, None)


def test_reloads_return_their_memory(bundle: Path) -> None:
    """50 reloads of the traced detector: resident memory flat within 20 MB (each fresh torch.jit.trace kept ~8 MB)."""

    def rss_mb() -> float:
        return next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmRSS")) / 1024

    c = client_for(Settings(model_dir=bundle, api_key="k", threads=1))
    for _ in range(5):  # allocator and caches warm up
        assert c.post("/admin/reload", headers={"x-api-key": "k"}).status_code == 200
    before = rss_mb()
    for _ in range(50):
        assert c.post("/admin/reload", headers={"x-api-key": "k"}).status_code == 200
    assert rss_mb() - before < 20
    c.__exit__(None, None, None)


def test_a_reload_of_the_same_architecture_reuses_the_engine_choice(bundle: Path, tmp_path: Path) -> None:
    """ "auto" times both engines once per architecture in a process; a reload with new weights keeps that choice
    (re-timing traced both engines again at every reload, and traced graphs stay in the process)."""
    from dnd.service.loading import load

    live = shutil.copytree(bundle, tmp_path / "live")
    first = load(Settings(model_dir=live)).info()["engine"]
    write_detector_bundle(live, seed=1)
    again = load(Settings(model_dir=live)).info()["engine"]
    assert again["name"] == first["name"] and again["timing"]["reused"] is True
    assert again["timing"]["median_ms"] == first["timing"]["median_ms"]
    fixed = load(Settings(model_dir=live, engine="sparse")).info()["engine"]
    assert fixed == {"name": "sparse", "traced": True, "timing": None}
