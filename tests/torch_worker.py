"""The PyTorch side of tests/test_export.py, in its own process as a user's would be.

Reads one JSON request per line on stdin and answers one JSON line on stdout:
``{"file", "card", "images", "features"}``: build the model the way a torchvision or timm
user does (not through ssljax), load `file` with `strict=True`, normalise the [N, H, W, 3]
images in `images` (.npy) with the mean/std such a user takes (the card's for
torchvision, timm's own data config for timm) and save the model's output to `features`.
The answer holds that mean/std. Kept apart from the test process because the CUDA build of
torch crashes beside TensorFlow (docs/transfer.md), and so that nothing ssljax imports
can make a wrong file load.
"""

import json
import sys

import numpy as np
import safetensors.torch
import timm
import torch
import torchvision


def build(card: dict):
    if card["format"] == "torchvision":
        model = getattr(torchvision.models, card["architecture"])(**card["kwargs"])
        setattr(model, card["identity_head"], torch.nn.Identity())
        return model
    return timm.create_model(*card["args"], **card["kwargs"])


def answer(request: dict) -> dict:
    card = request["card"]
    model = build(card).eval()
    path = request["file"]
    if path.endswith(".safetensors"):
        state_dict = safetensors.torch.load_file(path)
    else:
        state_dict = torch.load(path, weights_only=True)
    model.load_state_dict(state_dict, strict=True)
    if card["format"] == "timm":
        data_config = timm.data.resolve_data_config({}, model=model)
        mean, std = list(data_config["mean"]), list(data_config["std"])
    else:
        mean, std = card["mean"], card["std"]
    images = torch.from_numpy(np.load(request["images"]).transpose(0, 3, 1, 2).copy())
    x = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        features = model(x).numpy()
    np.save(request["features"], features)
    return {"mean": mean, "std": std, "shape": list(features.shape)}


def main() -> None:
    torch.set_num_threads(1)
    print(json.dumps({"ready": torch.__version__}), flush=True)
    for line in sys.stdin:
        try:
            reply = answer(json.loads(line))
        except Exception as e:  # the test reports it
            reply = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
