"""`camodet app MODEL`: a web page on localhost where anyone can drop a photo and see the
mask, the overlay and the cut-out, move the threshold, and download the cut-out (PNG with
transparency). Gradio is an optional extra: pip install 'camodet[app]'."""

import logging
import os
import shutil
import tempfile
import weakref

import numpy as np

from ..errors import CamodetError
from .predict import cutout_image, overlay_image

DEFAULT_PORT = 7860


class AppError(CamodetError, RuntimeError):
    """The demo cannot start; the message says what to install or change."""


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local demo
    try:
        import gradio as gr
    except ImportError:
        raise AppError("the web demo needs Gradio: pip install 'camodet[app]'") from None
    return gr


def render(image: np.ndarray, prob: np.ndarray, threshold: float, folder: str) -> tuple:
    """(mask, overlay, cut-out, path of the cut-out PNG) for one probability map."""
    from PIL import Image

    mask = prob >= float(threshold)
    cut = cutout_image(image, prob, mask)
    path = os.path.join(folder, "cutout.png")
    Image.fromarray(cut, "RGBA").save(path)
    return (mask * 255).astype(np.uint8), overlay_image(image, mask), cut, path


def show_photo(predictor, root: str, photo, threshold: float, state: tuple | None) -> tuple:
    """(session state, mask, overlay, cut-out, download) for a newly dropped photo (a file path,
    read as `camodet predict` reads files). A session keeps one folder for its cut-out under the
    app's `root`, reused for every photo; clearing the photo removes it."""
    from .predictor import as_rgb

    if photo is None:
        end_session(state)
        return None, None, None, None, None
    image = as_rgb(photo)
    prob = predictor.predict(image)
    folder = state[2] if state else tempfile.mkdtemp(prefix="session-", dir=root)
    return (image, prob, folder), *render(image, prob, threshold, folder)


def rethreshold(state: tuple | None, threshold: float) -> tuple:
    """The same probabilities at a new threshold (the model does not run again)."""
    if state is None:
        return None, None, None, None
    return render(*state[:2], threshold, state[2])


def end_session(state: tuple | None) -> None:
    """Remove a session's cut-out folder (the photo was cleared, or the visitor left)."""
    if state:
        shutil.rmtree(state[2], ignore_errors=True)


def build_app(predictor, title: str = "camodet"):
    """The Gradio Blocks: photo and threshold in, mask / overlay / cut-out and a download out.
    The probability map is kept per session, so the slider re-thresholds without re-running
    the model. Cut-outs live in one temporary folder, removed with the app."""
    gr = _gradio()
    root = tempfile.mkdtemp(prefix="camodet-app-")

    with gr.Blocks(title=f"{title}: camouflaged object detection", analytics_enabled=False) as demo:
        gr.Markdown(
            f"## {title}: find the camouflaged object\n"
            "Drop or upload a photo; the model marks what hides in it. Move the threshold to keep "
            "more or less; download the cut-out as a PNG with a transparent background."
        )
        with gr.Row():
            photo = gr.Image(
                label="Photo",
                # the uploaded file itself, read as `camodet predict` reads it (alpha, 16-bit, EXIF)
                type="filepath",
                image_mode=None,
                sources=["upload", "clipboard"],
                elem_id="photo",
            )
            with gr.Column():
                threshold = gr.Slider(
                    0.05, 0.95, value=0.5, step=0.05, label="Threshold (probability)", elem_id="threshold"
                )
                download = gr.File(label="Cut-out (PNG, transparent background)", elem_id="download")
        with gr.Row():
            mask = gr.Image(label="Mask", format="png", interactive=False, elem_id="mask")
            overlay = gr.Image(label="Overlay", format="png", interactive=False, elem_id="overlay")
            cut = gr.Image(
                label="Cut-out", format="png", image_mode="RGBA", interactive=False, elem_id="cutout"
            )
        state = gr.State(delete_callback=end_session)

        def run(photo, threshold, state):
            return show_photo(predictor, root, photo, threshold, state)

        photo.change(run, [photo, threshold, state], [state, mask, overlay, cut, download])
        threshold.change(rethreshold, [state, threshold], [mask, overlay, cut, download])
    weakref.finalize(demo, shutil.rmtree, root, True)  # with the app, at the latest at exit
    return demo


def launch(predictor, title: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT, block: bool = True):
    """Start the server; returns (demo, local URL). block=False returns at once (tests)."""
    demo = build_app(predictor, title)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up checks, one line each
    try:
        _, url, _ = demo.launch(
            server_name=host,
            server_port=port,
            share=False,
            prevent_thread_lock=True,
            quiet=True,
            ssr_mode=False,
            inbrowser=False,
        )
    except OSError as e:
        raise AppError(f"cannot listen on {host}:{port} ({e}); pass --port with a free port") from None
    print(f"camodet app: {title} at {url} (Ctrl-C stops it)", flush=True)
    if block:
        try:
            demo.block_thread()
        finally:
            demo.close()
    return demo, url
