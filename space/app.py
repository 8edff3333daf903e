"""Hugging Face Space entry point: `gradio app.py` (or `python app.py`).

Runs from public packages alone (requirements.txt): the model repository named in
HF_LANDMARK_MODEL brings its own pipeline code; hf_landmark is used instead when installed.
"""

import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from landmark_app import build_demo  # noqa: E402  (the package's hf_landmark/app.py)

examples = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples", "*.png")))
demo = build_demo(os.environ.get("HF_LANDMARK_MODEL"), examples=examples)

if __name__ == "__main__":
    demo.launch()
