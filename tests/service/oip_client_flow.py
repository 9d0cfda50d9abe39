"""The Open Inference Protocol client flow of tritonclient's HTTP example, run by the conformance test
(test_oip_client.py) in the client's own venv against a live server: python oip_client_flow.py URL MODEL NPY.
Prints one JSON object: what each call returned, or the client exception's message."""

import json
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

url, model, images = sys.argv[1], sys.argv[2], np.load(sys.argv[3])
client = httpclient.InferenceServerClient(url=url)
out: dict = {
    "live": client.is_server_live(),
    "ready": client.is_server_ready(),
    "model_ready": client.is_model_ready(model),
    "server": client.get_server_metadata(),
    "model": client.get_model_metadata(model),
}
version = out["model"]["versions"][0]
out["versioned_model"] = client.get_model_metadata(model, model_version=version)
out["versioned_ready"] = client.is_model_ready(model, model_version=version)


def infer(x: np.ndarray, binary_input: bool, outputs: list | None, model_version: str = "") -> dict:
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_input)
    result = client.infer(model, [inp], outputs=outputs, request_id="r1", model_version=model_version)
    response = result.get_response()
    return {
        "id": response["id"],
        "binary": {o["name"]: "binary_data_size" in o.get("parameters", {}) for o in response["outputs"]},
        "values": {o["name"]: result.as_numpy(o["name"]).tolist() for o in response["outputs"]},
    }


names = [o["name"] for o in out["model"]["outputs"]]
out["defaults"] = infer(images, True, None)  # the client's defaults: binary input, every output binary
out["json"] = infer(images, False, [httpclient.InferRequestedOutput(n, binary_data=False) for n in names])
out["subset"] = infer(
    images,
    True,
    [
        httpclient.InferRequestedOutput("attack_score", binary_data=False),
        httpclient.InferRequestedOutput("class_index", binary_data=True),
    ],
)
out["versioned"] = infer(images, True, None, model_version=version)
errors = {}
for case, call in {
    "out_of_range": lambda: infer(images * 255, True, None),
    "unknown_model": lambda: client.get_model_metadata("no-such-model"),
    "unknown_output": lambda: infer(images, True, [httpclient.InferRequestedOutput("logits")]),
}.items():
    try:
        call()
        errors[case] = None
    except InferenceServerException as e:
        errors[case] = e.message()
out["errors"] = errors
client.close()
print(json.dumps(out))
