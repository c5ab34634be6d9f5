"""The gradio page: a defect tab (brush mask → damage type), a reference tab (box → reference crop) and a text
tab (digit + source caption → target caption, with the changed word's attention map).

``build_app(...)`` returns the ``gr.Blocks``; :func:`launch` serves it on 127.0.0.1 by default. The page
only lays out :mod:`counterfactory.ui.logic`; a user mistake shows the library's one-line message (gr.Error),
never a traceback. Files are written only under ``out`` (runs, trained adapters, gradio's upload cache), and
the server serves nothing but what it made: no extra ``allowed_paths``, never ``share``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import CounterfactoryError, input_error
from . import logic

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
log = logging.getLogger("counterfactory.ui")

_BARE_NOTE = (
    "**No adapter: the shipped base alone.** It fills the painted region with surface texture continuing the "
    "surroundings (what it learned from procedural surfaces) - a plausible repair or blemish, not a chosen damage "
    "type. For cracks, scratches, spots and chips pick an adapter: the demo's (`make demo` writes "
    "`demo_out/adapter`), a folder of your own (type its path), or train one below.")


def _friendly(fn):
    """Run a handler; the library's errors become the app's one-line message, anything else a short one."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import gradio as gr

        try:
            return fn(*args, **kwargs)
        except CounterfactoryError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except gr.Error:
            raise
        except Exception as exc:  # a bug, not a user mistake: keep the details in the server log
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(f"unexpected {type(exc).__name__}: {exc} (details in the server log)",
                           print_exception=False) from None

    return wrapper


def outline(image: np.ndarray, mask: np.ndarray, color=(255, 40, 40)) -> np.ndarray:
    """The input view: ``image`` (uint8 H,W,3) with the boundary of ``mask`` drawn in ``color``."""
    m = mask > 127 if mask.dtype == np.uint8 else mask > 0.5
    inner = m.copy()
    inner[1:, :] &= m[:-1, :]
    inner[:-1, :] &= m[1:, :]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    out = image.copy()
    out[m & ~inner] = color
    return out


def _adapter_note(models: logic.Models, adapter: str | None) -> str:
    if logic._adapter_arg(adapter, "adapter") is None:
        return _BARE_NOTE
    pipe = models.defect(adapter)
    cfg = pipe.info.get("adapter_config", {})
    return (f"Adapter `{adapter}`: damage types {', '.join(pipe.defect_types)}; trained {cfg.get('steps', '?')} "
            f"steps on `{cfg.get('data', '?')}`.")


def build_app(out: str | Path, base: str | Path | None = None, adapter: str | None = None,
              reference_adapter: str | None = None, text_model: str | Path | None = None):
    """The page. ``out``: the one folder the app writes to; ``base``: compact base folder (default: shipped
    ``weights/``); ``adapter`` / ``reference_adapter``: the folders selected when the page opens;
    ``text_model``: the text-to-image folder of the text tab (default: shipped ``weights/text2image``)."""
    import gradio as gr

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    models = logic.Models(base, text_model=text_model)
    adapters = logic.find_adapters(out, [adapter])
    first = adapters[0]
    first_types = logic.damage_types(models, first)
    ref_first = str(Path(reference_adapter).resolve()) if reference_adapter else ""

    def views(result: logic.RunResult):
        gallery = [(r, f"seed {s}") for r, s in zip(result.results, result.settings["seeds"])]
        status = (f"Done in {result.seconds:.1f} s: {len(result.results)} result(s) in `{result.folder}`. "
                  f"Pixels outside the region are the input's, bit for bit.")
        return (outline(result.input, result.mask), result.results[0], result.differences[0],
                gr.update(value=gallery, visible=len(gallery) > 1), [str(f) for f in result.files], status)

    # ------------------------------------------------------------------ handlers
    @_friendly
    def on_adapter(choice):
        types = logic.damage_types(models, choice)
        return gr.update(choices=types, value=types[0]), _adapter_note(models, choice)

    @_friendly
    def on_generate(editor, mask_file, choice, dtype, steps, guidance, seed, n, progress=gr.Progress(track_tqdm=True)):
        image = logic.editor_image(editor, "image")
        shape = image.shape[:2]
        mask = logic.uploaded_mask(mask_file, shape) if mask_file is not None else logic.editor_mask(editor, shape)
        result = logic.run_defect(models, out, image, mask, choice, dtype, steps, guidance, seed, n,
                                  progress=lambda f, t: progress(f, desc=t))
        return views(result)

    @_friendly
    def on_train(data, steps, seed, progress=gr.Progress(track_tqdm=True)):
        progress(0.0, desc="preparing data")
        path = logic.train_small_adapter(out, data, steps, seed, base=str(base) if base else None)
        choices = logic.find_adapters(out, [adapter, str(path)])
        types = logic.damage_types(models, str(path))
        return (gr.update(choices=choices, value=str(path)), gr.update(choices=types, value=types[0]),
                f"Trained: `{path}` (selected above). " + _adapter_note(models, str(path)))

    @_friendly
    def on_reference(editor, box_text, reference, ref_adapter, steps, guidance, seed, n, harmonise,
                     progress=gr.Progress(track_tqdm=True)):
        image = logic.editor_image(editor, "image")
        box = logic.resolve_box(box_text, logic.editor_mask(editor, image.shape[:2]), image.shape[:2])
        if reference is None:
            raise input_error("reference image", "none", "an uploaded reference crop (the defect or object to paint in)")
        ref = logic.editor_image(reference, "reference image")
        result = logic.run_reference(models, out, image, ref, box, ref_adapter, steps, guidance, seed, n,
                                     progress=lambda f, t: progress(f, desc=t), harmonise=bool(harmonise))
        return views(result)

    @_friendly
    def on_text_image(image, digit_class):
        if image is None:
            return gr.update(), gr.update()
        source = logic.source_caption(logic.text_digit(image), digit_class)
        return source, logic.suggest_target(source)

    @_friendly
    def on_draw(caption, seed):
        return logic.to_u8(logic.draw_digit(models, caption, seed))

    @_friendly
    def on_text_edit(image, source, target, method, steps, guidance, cross, self_, blend,
                     progress=gr.Progress(track_tqdm=True)):
        digit = logic.text_digit(image)
        r = logic.run_text_edit(models, out, digit, source, target, method, steps, guidance, cross, self_, blend,
                                progress=lambda f, t: progress(f, desc=t))
        word = " ".join(r.settings["added_words"]) or "the changed word"
        status = (f"Done in {r.seconds:.1f} s ({r.settings['edit_type']} edit, {r.settings['unet_calls']:g} UNet calls) "
                  f"in `{r.folder}`. Attention: where '{word}' looks, averaged over layers and steps.")
        return (r.input, r.edited, r.attention, f"<p style='font-size:1.1em'>{r.caption_diff}</p>",
                [str(f) for f in r.files], status)

    # ------------------------------------------------------------------ layout
    def editor(label, elem_id):
        return gr.ImageEditor(
            label=label, elem_id=elem_id, type="pil", image_mode="RGBA", format="png", sources=["upload", "clipboard"],
            transforms=(), layers=False, eraser=gr.Eraser(default_size=8),
            brush=gr.Brush(colors=["#ff3030"], default_color="#ff3030", color_mode="fixed", default_size=8),
            height=420)

    def result_views(prefix):
        with gr.Row():
            v_in = gr.Image(label="input (region outlined)", elem_id=f"{prefix}-input", interactive=False,
                            format="png", height=300)
            v_out = gr.Image(label="result", elem_id=f"{prefix}-result", interactive=False, format="png", height=300)
            v_diff = gr.Image(label=f"difference x{logic.DIFF_GAIN}", elem_id=f"{prefix}-diff", interactive=False,
                              format="png", height=300)
        gallery = gr.Gallery(label="all variations (one per seed)", elem_id=f"{prefix}-gallery", columns=8,
                             height=200, format="png", preview=False, object_fit="contain", visible=False)
        files = gr.File(label="downloads: result PNG per seed, mask PNG, settings JSON", elem_id=f"{prefix}-files",
                        file_count="multiple", interactive=False)
        status = gr.Markdown(elem_id=f"{prefix}-status")
        return [v_in, v_out, v_diff, gallery, files, status]

    with gr.Blocks(title="Counterfactory", analytics_enabled=False) as app:
        gr.Markdown("# Counterfactory\nControlled counterfactual images: paint a defect where you want it, or a "
                    "reference crop into a box. Everything outside the region stays bit-identical.")
        with gr.Tab("Defect", elem_id="tab-defect"):
            with gr.Row():
                with gr.Column(scale=3):
                    d_editor = editor("image: upload, then paint the defect region with the brush", "defect-editor")
                    with gr.Accordion("or upload a mask (white = paint; overrides the brush)", open=False):
                        d_mask = gr.Image(label="mask", type="pil", image_mode="L", format="png",
                                          elem_id="defect-mask-upload", height=200)
                with gr.Column(scale=2):
                    d_adapter = gr.Dropdown(adapters, value=first, label="adapter (choose, or type a folder path)",
                                            allow_custom_value=True, elem_id="defect-adapter")
                    d_note = gr.Markdown(_adapter_note(models, first))
                    d_type = gr.Dropdown(first_types, value=first_types[0], label="damage type", elem_id="defect-type")
                    d_steps = gr.Slider(1, 100, value=25, step=1, label="denoising steps")
                    d_guid = gr.Slider(0, 10, value=2.0, step=0.1, label="guidance (1 = none)")
                    with gr.Row():
                        d_seed = gr.Number(0, precision=0, minimum=0, label="seed", elem_id="defect-seed")
                        d_n = gr.Slider(1, logic.MAX_SEEDS, value=1, step=1, label="variations (seeds)")
                    d_go = gr.Button("Generate", variant="primary", elem_id="defect-generate")
                    with gr.Accordion("train a small adapter", open=False, elem_id="train-accordion"):
                        gr.Markdown("Few-shot LoRA + damage-type embeddings on the shipped base. Leave the folder "
                                    "empty to train on procedural surfaces (crack, scratch, spot, chip; 5 shots "
                                    "each). About 1.3 s per step on a free CPU core; more steps, better damage.")
                        t_data = gr.Textbox(label="dataset folder (MVTec layout; empty = procedural)", value="")
                        with gr.Row():
                            t_steps = gr.Number(100, precision=0, minimum=1, label="steps")
                            t_seed = gr.Number(0, precision=0, minimum=0, label="seed")
                        t_go = gr.Button("Train", elem_id="train-button")
                        t_status = gr.Markdown()
            d_outputs = result_views("defect")

        with gr.Tab("Reference", elem_id="tab-reference"):
            with gr.Row():
                with gr.Column(scale=3):
                    r_editor = editor("image: upload, then paint over the region to fill (its bounding box is used)",
                                      "reference-editor")
                with gr.Column(scale=2):
                    r_ref = gr.ImageEditor(label="reference crop (the defect or object to paint in)", type="pil",
                                           image_mode="RGBA", format="png", sources=["upload", "clipboard"],
                                           transforms=("crop",), layers=False, brush=False, eraser=False,
                                           elem_id="reference-crop", height=220)
                    r_box = gr.Textbox(label="box x0,y0,x1,y1 (optional: overrides the painted region)",
                                       placeholder="e.g. 20,30,60,70", elem_id="reference-box")
                    r_adapter = gr.Textbox(ref_first, label="reference adapter folder (from `counterfactory "
                                                            "train-reference`)", elem_id="reference-adapter")
                    r_steps = gr.Slider(1, 100, value=25, step=1, label="denoising steps")
                    r_guid = gr.Slider(0, 10, value=2.0, step=0.1, label="guidance (1 = none)")
                    r_harm = gr.Checkbox(False, label="keep the reference: paste it and redo only the seam "
                                                      "(best measured with guidance 1)", elem_id="reference-harmonise")
                    with gr.Row():
                        r_seed = gr.Number(0, precision=0, minimum=0, label="seed")
                        r_n = gr.Slider(1, logic.MAX_SEEDS, value=1, step=1, label="variations (seeds)")
                    r_go = gr.Button("Insert", variant="primary", elem_id="reference-generate")
            r_outputs = result_views("reference")
        with gr.Tab("Text", elem_id="tab-text"):
            with gr.Row():
                with gr.Column(scale=2):
                    x_image = gr.Image(label="digit (28x28 grey, light stroke on dark; larger images are resized)",
                                       type="numpy", image_mode="L", format="png", sources=["upload", "clipboard"],
                                       elem_id="text-image", height=260)
                    x_class = gr.Dropdown([logic.NO_CLASS, *map(str, range(10))], value=logic.NO_CLASS,
                                          label="digit class (names the digit in the caption)", elem_id="text-class")
                    with gr.Accordion("or draw a digit with the text-to-image model", open=False):
                        x_draw_caption = gr.Textbox("a thin, upright, dim seven", label="caption to draw from",
                                                    elem_id="text-draw-caption")
                        with gr.Row():
                            x_draw_seed = gr.Number(0, precision=0, minimum=0, label="seed", elem_id="text-draw-seed")
                            x_draw = gr.Button("Draw", elem_id="text-draw")
                with gr.Column(scale=3):
                    x_source = gr.Textbox(label="source caption (measured from the digit; edit if you like)",
                                          elem_id="text-source")
                    x_target = gr.Textbox(label="target caption (swap a word: thin/thick, upright/slanted, dim/bright, "
                                                "the digit word)", elem_id="text-target")
                    x_method = gr.Dropdown(list(logic.TEXT_METHODS), value="direct", label="inversion",
                                           elem_id="text-method")
                    with gr.Row():
                        x_steps = gr.Slider(1, 50, value=10, step=1, label="DDIM steps")
                        x_guid = gr.Slider(1, 10, value=3.0, step=0.1, label="guidance")
                    with gr.Row():
                        x_cross = gr.Slider(0, 1, value=0.8, step=0.05, label="cross-attention replace (fraction of steps)",
                                            elem_id="text-cross")
                        x_self = gr.Slider(0, 1, value=0.4, step=0.05, label="self-attention replace (fraction of steps)",
                                           elem_id="text-self")
                    x_blend = gr.Checkbox(True, label="local blend (change only where the changed words attend)",
                                          elem_id="text-blend")
                    x_go = gr.Button("Edit", variant="primary", elem_id="text-generate")
            with gr.Row():
                xv_in = gr.Image(label="input", elem_id="text-input", interactive=False, format="png", height=260)
                xv_out = gr.Image(label="edited", elem_id="text-result", interactive=False, format="png", height=260)
                xv_att = gr.Image(label="attention of the changed word (over the edited digit)",
                                  elem_id="text-attention", interactive=False, format="png", height=260)
            xv_diff = gr.HTML(elem_id="text-diff")
            xv_files = gr.File(label="downloads: edited PNG, attention overlay and map PNGs, report.html, settings JSON",
                               elem_id="text-files", file_count="multiple", interactive=False)
            xv_status = gr.Markdown(elem_id="text-status")

        d_adapter.change(on_adapter, [d_adapter], [d_type, d_note])
        d_go.click(on_generate, [d_editor, d_mask, d_adapter, d_type, d_steps, d_guid, d_seed, d_n], d_outputs)
        t_go.click(on_train, [t_data, t_steps, t_seed], [d_adapter, d_type, t_status])
        r_go.click(on_reference, [r_editor, r_box, r_ref, r_adapter, r_steps, r_guid, r_seed, r_n, r_harm],
                   r_outputs)
        x_image.change(on_text_image, [x_image, x_class], [x_source, x_target])
        x_class.change(on_text_image, [x_image, x_class], [x_source, x_target])
        x_draw.click(on_draw, [x_draw_caption, x_draw_seed], [x_image])
        x_go.click(on_text_edit, [x_image, x_source, x_target, x_method, x_steps, x_guid, x_cross, x_self, x_blend],
                   [xv_in, xv_out, xv_att, xv_diff, xv_files, xv_status])
    return app


def _theme():
    """Gradio's default look with system fonts: the page loads nothing from the internet."""
    import gradio as gr

    sans = ["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"]
    mono = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
    return gr.themes.Default(font=sans, font_mono=mono)


@contextlib.contextmanager
def _patient_start_check(seconds: float = 60.0):
    """gradio checks that its own page answers within one 3 s request, else refuses to start without
    ``share``; on a busy machine the first answer can take longer, so the check waits up to ``seconds``."""
    from gradio import networking

    original = networking.url_ok

    def url_ok(url: str) -> bool:
        import httpx

        t0 = time.time()
        while time.time() - t0 < seconds:
            try:
                if httpx.head(url, timeout=10).status_code < 400:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        return False

    networking.url_ok = url_ok
    try:
        yield
    finally:
        networking.url_ok = original


def launch(out: str | Path = "ui_out", host: str = "127.0.0.1", port: int = 7860, base: str | None = None,
           adapter: str | None = None, reference_adapter: str | None = None, open_browser: bool = False,
           block: bool = True, quiet: bool = False, text_model: str | None = None):
    """Serve the app on ``host:port``; returns the gradio ``Blocks`` (already running when ``block=False``)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise input_error("port", port, "an integer in [1, 65535]")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # gradio's uploads and served copies live inside the app's folder, nowhere else
    os.environ["GRADIO_TEMP_DIR"] = str(out / "cache")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if host not in LOCAL_HOSTS:
        print(f"warning: serving on {host}:{port}: anyone who can reach this address can use the app and download "
              f"what it made (no login); use --host 127.0.0.1 to keep it on this machine", file=sys.stderr)
    app = build_app(out, base=base, adapter=adapter, reference_adapter=reference_adapter, text_model=text_model)
    app.queue(default_concurrency_limit=1)
    try:
        with _patient_start_check():
            app.launch(server_name=host, server_port=port, share=False, allowed_paths=[], inbrowser=open_browser,
                       prevent_thread_lock=not block, quiet=quiet, show_error=False, theme=_theme(),
                       footer_links=[], ssr_mode=False, mcp_server=False, pwa=False)
    except OSError as exc:
        raise input_error("port", port, f"a free port on {host} ({exc})") from None
    return app
