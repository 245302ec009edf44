"""``mobiledense predict seg``: images or folders -> label PNGs + colour overlays.

Per image: ``<stem>_labelIds.png`` (official Cityscapes label ids),
``<stem>_color.png`` (official palette) and ``<stem>_overlay.png`` (palette
blended over the photo, each region outlined in white). Both PNGs for people
carry a legend strip below the image (swatch, name and pixel share of every
class present); ``--no-legend`` writes them at the image's own size, pixel for
pixel. One image is in memory at a time. An image that cannot be read is
reported and skipped; the exit status is then 1.

A video file (.mp4 .avi .mov .mkv .webm .m4v .mpg .mpeg), a camera index ("0") or
a stream URL (rtsp://, rtmp://, http(s)://) is segmented frame by frame with the
same code (:mod:`.video`: decode, inference and drawing overlapped) into
``<stem>_annotated.mp4`` (the overlay, outlined, no legend: every frame keeps the
video's size) and ``<stem>.jsonl``: per frame ``frame``, ``t`` (seconds), size and
the pixel share of each class present, largest first; ``--save-masks`` adds
``<stem>_masks/<frame>_labelIds.png``. A source that cannot be opened is an error
(exit status 2).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, Sequence

from .common import add_inference_arguments

if TYPE_CHECKING:
    import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+",
                        help="image files, folders (searched recursively for images), video files, camera indices "
                             "(0, 1) or stream URLs (rtsp://, rtmp://, http(s)://)")
    parser.add_argument("--checkpoint", help="mobiledense training checkpoint (or --artifact FILE)")
    parser.add_argument("--scale", type=float,
                        help="resize images by this factor before inference (default: to the run's eval "
                             "resolution, base size x eval scale, keeping each image's aspect ratio)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1] (default 0.5)")
    parser.add_argument("--no-legend", action="store_true",
                        help="no legend strip under the colour and overlay PNGs (they keep the image's size)")
    parser.add_argument("--no-outline", action="store_true", help="no white region outlines in the overlay")
    parser.add_argument("--output-dir", help="default: predict/ beside the checkpoint's run (runs/seg/predict)")
    parser.add_argument("--max-frames", type=int, help="videos: stop after N frames (a camera runs until Ctrl-C)")
    parser.add_argument("--save-masks", action="store_true",
                        help="videos: also write <stem>_masks/<frame>_labelIds.png per frame (images always get one)")
    add_inference_arguments(parser)


def class_shares(train_ids: np.ndarray, names: Sequence[str] | None) -> list[dict[str, Any]]:
    """Pixel share of every class present, largest first (a video frame's JSON line; 255 = ignored)."""
    import numpy as np

    from mobiledense.datasets.cityscapes_labels import CLASS_NAMES

    counts = np.bincount(train_ids.ravel(), minlength=256)
    total, names = max(int(counts.sum()), 1), CLASS_NAMES if names is None else names
    ids = sorted(np.flatnonzero(counts).tolist(), key=lambda i: (-counts[i], i))
    return [{"train_id": i, "name": "ignored" if i == 255 else (names[i] if i < len(names) else f"class {i}"),
             "share": round(int(counts[i]) / total, 5)} for i in ids]


def _run_videos(args: argparse.Namespace, videos: list[str], out: Any, model: Any, task: Any, device: Any,
                names: Sequence[str] | None) -> bool:
    """Each video input -> ``<stem>_annotated.mp4`` + ``<stem>.jsonl`` (+ masks); frames/s printed per video.
    True if Ctrl-C stopped one (its outputs are complete; the inputs after it are not run)."""
    import cv2

    from mobiledense.datasets.cityscapes_labels import train_ids_to_label_ids
    from mobiledense.datasets.io import write_image

    from .evaluation.overlays import segmentation_overlay
    from .video import VideoSink, VideoSource, run_video_pipeline, unique_stems

    for item, stem in unique_stems(videos):
        masks = out / f"{stem}_masks"
        if args.save_masks:
            masks.mkdir(parents=True, exist_ok=True)

        def infer(frame):  # noqa: ANN001, ANN202 - video.Frame -> train ids (H, W uint8)
            return task.predict(model, frame.image, device, args.scale)

        def draw(frame, train_ids):  # noqa: ANN001, ANN202
            overlay = segmentation_overlay(frame.image, train_ids, args.alpha, names, outline=not args.no_outline,
                                           legend=False)  # a legend's height varies: video frames cannot
            if args.save_masks:
                write_image(masks / f"{frame.index:06d}_labelIds.png", train_ids_to_label_ids(train_ids))
            record = {"height": train_ids.shape[0], "width": train_ids.shape[1],
                      "classes": class_shares(train_ids, names)}
            return cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR, dst=overlay), record

        source = VideoSource(item)
        sink = VideoSink(out / f"{stem}_annotated.mp4", source.fps)
        stats = run_video_pipeline(source, infer, draw, sink, out / f"{stem}.jsonl", max_frames=args.max_frames,
                                   desc=f"segment {stem}")
        print(f"{item}: {stats.frames} frames{' (stopped by Ctrl-C)' if stats.interrupted else ''}, "
              f"{stats.fps:.1f} frames/s end to end (model {stats.model_ms_per_frame:.1f} ms/frame) -> "
              f"{out}/{stem}_annotated.mp4, {out}/{stem}.jsonl" + (f", {masks}/" if args.save_masks else ""))
        if stats.interrupted:
            return True
    return False


def run(args: argparse.Namespace) -> int:
    import cv2

    from mobiledense.datasets.cityscapes_labels import train_ids_to_label_ids
    from mobiledense.datasets.io import write_image
    from mobiledense.heads.inference import inference_model

    from .common import load_deployed, output_folder, list_images, read_images, select_device
    from .engine.tasks import SegmentationTask, load_trained_model
    from .evaluation.overlays import segmentation_colour, segmentation_overlay
    from .video import check_video_inputs

    out = output_folder(args.output_dir, args.checkpoint, "predict", "runs/seg/predict")
    bad = [msg for ok, msg in ((0 <= args.alpha <= 1, f"--alpha must be in [0, 1], got {args.alpha}"),
                               (args.scale is None or args.scale > 0, f"--scale must be > 0, got {args.scale}"))
           if not ok]
    if bad:
        raise ValueError("; ".join(bad))
    videos, images = check_video_inputs(args.inputs, args.max_frames)
    files = list_images(images) if images else []
    if not (args.checkpoint or args.artifact):
        raise ValueError("give --checkpoint FILE (a training checkpoint) or --artifact FILE (mobiledense export)")
    model, spec = load_deployed(args, "seg", lambda: load_trained_model(args.checkpoint, "seg"))
    if spec is None:
        raise ValueError("--artifact carries no run spec (it was exported with --model, not --checkpoint): give "
                         "--checkpoint too, for the data and resolution")
    if args.scale is not None:
        base = spec.data.base_size or spec.data.crop
        print(f"--scale {args.scale:g} overrides the run's eval resolution ({base[0]}x{base[1]} x "
              f"{spec.data.eval_scale:g})")
    device = select_device(args.device)
    model = inference_model(model, device, args.eager)
    task = SegmentationTask(spec)
    out.mkdir(parents=True, exist_ok=True)
    if videos:
        if _run_videos(args, videos, out, model, task, device, spec.model.class_names or None) or not files:
            return 0
    failed = 0
    for path, image, _ in read_images(files, "segment"):
        if image is not None:
            try:
                train_ids = task.predict(model, image, device, args.scale)
            except ValueError as e:  # e.g. an image too small for the network at the size asked
                image = None
                print(f"warning: skipping {path}: {e}", file=sys.stderr)
        if image is None:
            failed += 1
            continue
        write_image(out / f"{path.stem}_labelIds.png", train_ids_to_label_ids(train_ids))
        names = spec.model.class_names or None
        legend = not args.no_legend
        overlay = segmentation_overlay(image, train_ids, args.alpha, names, outline=not args.no_outline,
                                       legend=legend)
        del image  # large photos: at most three image-sized buffers alive (converted in place below)
        colour = segmentation_colour(train_ids, names, legend=legend)
        write_image(out / f"{path.stem}_color.png", cv2.cvtColor(colour, cv2.COLOR_RGB2BGR, dst=colour))
        write_image(out / f"{path.stem}_overlay.png", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR, dst=overlay))
    print(f"{len(files) - failed} images -> {out}/ (*_labelIds.png, *_color.png, *_overlay.png)")
    if failed:
        print(f"error: {failed} of {len(files)} images could not be read or segmented (see the warnings above)",
              file=sys.stderr)
    return 1 if failed else 0
