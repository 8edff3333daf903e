import json
import socket

import numpy as np
from PIL import Image


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gradio_round_trip(tmp_path):
    from gradio_client import Client, handle_file

    from hf_landmark import LandmarkConfig, LandmarkDetector
    from hf_landmark.app import build_demo

    LandmarkDetector(LandmarkConfig(backbone_config="tiny", num_landmarks=2, image_size=32, landmark_names=["a", "b"],
                                    spacing=[0.1, 0.1])).save_pretrained(tmp_path / "m")  # fmt: skip
    Image.fromarray((np.random.default_rng(0).random((60, 50)) * 255).astype(np.uint8)).save(tmp_path / "x.png")
    demo = build_demo(str(tmp_path / "m"))
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        overlay, table, json_path = client.predict(handle_file(str(tmp_path / "x.png")), str(tmp_path / "m"), "centroid", api_name="/predict")
        assert Image.open(overlay).size == (50, 60)
        assert [row[:2] for row in table["data"]] == [[1, "a"], [2, "b"]]
        data = json.loads(open(json_path, encoding="utf-8").read())
        assert [p["label"] for p in data["landmarks"]] == ["a", "b"] and "x_mm" in data["landmarks"][0]
    finally:
        demo.close()
