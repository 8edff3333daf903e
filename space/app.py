"""Hugging Face Space entry point: `gradio app.py` (or `python app.py`)."""

import os

from hf_landmark.app import build_demo

demo = build_demo(os.environ.get("HF_LANDMARK_MODEL"))

if __name__ == "__main__":
    demo.launch()
