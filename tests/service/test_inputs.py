"""What the service does with the bodies it is sent: bad input is a clear 4xx with the documented error shape, and
every accepted image becomes the RGB a person would see."""

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from detector.images import BACKGROUND, FORMATS, decode_image

from ..conftest import REAL_DATA, TINY_LAYERS
from .conftest import png

REPO = Path(__file__).resolve().parents[2]


def _truncated() -> bytes:
    return png(seed=1)[:60]


def _solid(w: int, h: int) -> bytes:  # a w x h grey PNG: w * h pixels from a few kB
    buf = io.BytesIO()
    Image.new("L", (w, h)).save(buf, "PNG")
    return buf.getvalue()


def _saved(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _multipart(body: bytes, boundary: str = "XyZ") -> tuple[bytes, str]:
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return head + body + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


DEEP_LIST = b"[" * 10_000 + b"]" * 10_000
DEEP_OBJECT = b'{"a":' * 10_000 + b"1" + b"}" * 10_000


@pytest.mark.parametrize(
    "content, ctype, status, code",
    [
        (b"hello", "text/plain", 415, "unsupported_media_type"),
        (b"this is not an image at all", "image/png", 415, "not_an_image"),
        (_truncated(), "image/png", 400, "corrupt_image"),
        (b"", "image/png", 400, "empty_body"),
        (b"\0" * 300_000, "image/png", 413, "body_too_large"),
        (_solid(6000, 6000), "image/png", 413, "image_too_large"),  # decompression bomb
        (_solid(600, 600), "image/png", 413, "image_too_large"),  # over DND_MAX_IMAGE_PIXELS
        (b"{not json", "application/json", 422, "invalid_json"),
        (json.dumps({"images": ["@@@not base64@@@"]}).encode(), "application/json", 400, "invalid_base64"),
        (json.dumps({"images": []}).encode(), "application/json", 422, "invalid_json"),
        (json.dumps({"images": ["aGk="] * 9}).encode(), "application/json", 413, "too_many_images"),
        (DEEP_LIST, "application/json", 422, "invalid_json"),
        (DEEP_OBJECT, "application/json", 422, "invalid_json"),
        (b'{"images": [' + b"1" * 5000 + b"]}", "application/json", 422, "invalid_json"),  # over int's digit limit
        (b'{"images": [NaN, Infinity]}', "application/json", 422, "invalid_json"),
        (b'\xff\xfe{"images"', "application/json", 422, "invalid_json"),
        (_multipart(png())[0][:-12], "multipart/form-data; boundary=XyZ", 400, "invalid_multipart"),  # unterminated
        (b"--XyZ garbage", "multipart/form-data; boundary=XyZ", 400, "invalid_multipart"),
        (b"anything", "multipart/form-data", 400, "invalid_multipart"),  # no boundary
    ],
)
def test_bad_input_is_a_clear_4xx(client: TestClient, content: bytes, ctype: str, status: int, code: str) -> None:
    r = client.post("/predict", content=content, headers={"content-type": ctype})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["status"] == status and err["code"] == code and err["message"]
    assert err["request_id"] == r.headers["x-request-id"]


def test_multipart_without_file_field(client: TestClient) -> None:
    r = client.post("/predict", files={"image": ("a.png", png(), "image/png")})
    assert r.status_code == 422 and r.json()["error"]["code"] == "missing_file"
    r = client.post("/predict", files={"file": ("a.txt", b"hello", "text/plain")})
    assert r.status_code == 415
    body, ctype = _multipart(png())
    assert client.post("/predict", content=body, headers={"content-type": ctype}).status_code == 200


def test_bomb_error_quotes_the_configured_limit(client: TestClient) -> None:
    r = client.post("/predict", content=_solid(6000, 6000), headers={"content-type": "image/png"})
    msg = r.json()["error"]["message"]
    assert str(512 * 512) in msg and "33554432" not in msg and "16777216" not in msg


@pytest.mark.parametrize("fmt", ["ICO", "TGA", "PCX", "EPS"])
def test_formats_outside_the_list_are_refused_by_name(client: TestClient, fmt: str) -> None:
    im = Image.new("RGB", (32, 32), (200, 10, 10))
    data = _saved(im, fmt) if fmt != "EPS" else b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\nshowpage\n"
    r = client.post("/predict", content=data, headers={"content-type": "image/x-any"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "not_an_image"
    assert all(f in r.json()["error"]["message"] for f in FORMATS)


def _pixels(data: bytes) -> torch.Tensor:
    return decode_image(data, 4096 * 4096, 32)[0]


def test_16_bit_and_float_images_look_like_their_8_bit_copy() -> None:
    rng = np.random.default_rng(0)
    grey8 = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    ref = _pixels(_saved(Image.fromarray(grey8, "L"), "PNG"))
    as16 = Image.fromarray(grey8.astype(np.uint16) * 257)  # I;16: the same picture at 16 bits
    for fmt in ("PNG", "TIFF"):
        assert (_pixels(_saved(as16, fmt)) - ref).abs().max() <= 1 / 255 + 1e-6, fmt
    for scale in (1 / 255, 1.0):  # float TIFF in [0, 1] and in 0-255
        f = Image.fromarray(grey8.astype(np.float32) * scale, "F")
        assert (_pixels(_saved(f, "TIFF")) - ref).abs().max() <= 1 / 255 + 1e-6, scale
    i32 = Image.fromarray(grey8.astype(np.int32) * 257, "I")
    assert (_pixels(_saved(i32, "TIFF")) - ref).abs().max() <= 1 / 255 + 1e-6


def test_exif_orientation_is_applied() -> None:
    arr = np.zeros((32, 32, 3), np.uint8)
    arr[:, :16] = 255  # left half white
    upright = _pixels(_saved(Image.fromarray(arr), "PNG"))
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(arr, 1)))  # stored rotated, EXIF says turn it back
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    seen = _pixels(_saved(stored, "JPEG", exif=exif, quality=100))
    assert (seen - upright).abs().mean() < 0.02
    assert (_pixels(_saved(stored, "JPEG", quality=100)) - upright).abs().mean() > 0.3  # without EXIF it differs


def test_transparency_is_composited_on_the_documented_background() -> None:
    arr = np.zeros((32, 32, 4), np.uint8)
    arr[..., :3] = (0, 0, 255)  # hidden blue behind alpha 0
    x = _pixels(_saved(Image.fromarray(arr, "RGBA"), "PNG"))
    assert torch.allclose(x, torch.tensor(BACKGROUND, dtype=torch.float32).view(3, 1, 1) / 255)
    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([0, 0, 255] + [0] * 765)
    x = _pixels(_saved(pal, "PNG", transparency=0))
    assert torch.allclose(x, torch.ones(3, 32, 32))
    half = arr.copy()
    half[..., 3] = 128
    x = _pixels(_saved(Image.fromarray(half, "RGBA"), "PNG"))
    assert abs(float(x[0].mean()) - 127 / 255) < 0.01 and abs(float(x[2].mean()) - 1.0) < 0.01


def test_unexpected_errors_are_a_500_with_a_request_id_and_no_internals(client: TestClient, monkeypatch) -> None:
    batcher = client.app.state.dnd.batcher

    async def boom(x):
        raise RuntimeError("secret internals /etc/passwd")

    monkeypatch.setattr(batcher, "submit", boom)
    r = client.post("/predict", content=png(), headers={"content-type": "image/png", "x-request-id": "abc-123"})
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["code"] == "internal_error" and err["request_id"] == "abc-123" == r.headers["x-request-id"]
    assert "secret" not in r.text and "RuntimeError" not in r.text
    monkeypatch.undo()
    assert client.post("/predict", content=png(), headers={"content-type": "image/png"}).status_code == 200


def test_explain_is_honoured_on_every_route(client: TestClient) -> None:
    h = {"content-type": "image/png"}
    for route in ("/predict", "/classify", "/detect"):
        p = client.post(f"{route}?explain=true", content=png(), headers=h).json()["predictions"][0]
        assert len(p["active_filters"]) == len(p["per_layer_divergence"]["hamming"]) == TINY_LAYERS, route


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")  # Pillow's own complaint about this very input
def test_a_struct_level_garbage_tiff_is_a_4xx(client: TestClient) -> None:
    bad = b"II*\x00" + struct.pack("<I", 8) + b"\xff" * 64  # a TIFF header pointing at a nonsense directory
    r = client.post("/predict", content=bad, headers={"content-type": "image/tiff"})
    assert 400 <= r.status_code < 500


@pytest.mark.parametrize("k", [2, 4])
def test_an_image_enlarged_by_whole_pixels_decodes_to_itself(k: int) -> None:
    """Shrinking averages areas (the box filter): an image sent k times larger by pixel repetition comes back exactly,
    where a bilinear tent would blur it."""
    im = Image.open(io.BytesIO(png(seed=3)))
    back, resized = decode_image(_saved(im.resize((32 * k, 32 * k), Image.Resampling.NEAREST), "PNG"), 10**8, 32)
    assert resized == [32 * k, 32 * k]
    assert torch.equal((back * 255).round().to(torch.uint8), torch.from_numpy(np.asarray(im)).permute(2, 0, 1))


@pytest.mark.parametrize("size", [(16, 16), (40, 24)])
def test_an_image_with_a_side_under_the_input_size_is_enlarged_bicubic(size: tuple[int, int]) -> None:
    """A side that grows is interpolated bicubically (smoother than the box filter's repeated pixels)."""
    im = Image.open(io.BytesIO(png(*size, seed=4)))
    back, _ = decode_image(_saved(im, "PNG"), 10**8, 32)
    want = np.asarray(im.convert("RGB").resize((32, 32), Image.Resampling.BICUBIC))
    assert torch.equal((back * 255).round().to(torch.uint8), torch.from_numpy(want).permute(2, 0, 1))


def test_real_images_sent_larger_are_classified_as_well_as_themselves() -> None:
    """Real test images sent 2x and 4x larger (bicubic, as PNG) lose at most 2 points of the shipped network's
    accuracy once the service has brought them back to 32 x 32 (a bilinear resize lost 3-4)."""
    from detector import load_model

    test = REAL_DATA / "test"
    if not test.is_dir():
        pytest.skip(f"CIFAR-10 image folders not unpacked at {REAL_DATA} (run `make data` or set DND_TEST_DATA)")
    classes = sorted(p.name for p in test.iterdir() if p.is_dir())
    ims = [(Image.open(f).convert("RGB"), i) for i, c in enumerate(classes) for f in sorted((test / c).iterdir())[:50]]
    y = torch.tensor([i for _, i in ims])
    model = load_model(REPO / "models" / "resnet20-decoupled").eval()

    def accuracy(k: int) -> float:
        sent = [_saved(im.resize((32 * k, 32 * k), Image.Resampling.BICUBIC), "PNG") for im, _ in ims]
        x = torch.stack([decode_image(b, 10**8, 32)[0] for b in sent])
        with torch.inference_mode():
            return float((model(x).argmax(1) == y).float().mean())

    itself = accuracy(1)
    assert itself > 0.8
    for k in (2, 4):
        assert accuracy(k) >= itself - 0.02, f"sent {k}x larger"
