"""``mobiledense predict det``: images, folders or videos -> boxes (JSON Lines) + overlay PNGs / video.

One image is in memory at a time and results are streamed to
``predictions.jsonl``, so memory stays flat however many images are given.
An image that cannot be read (missing, empty, truncated, corrupt) gets an
``{"file": ..., "error": ...}`` line instead and the run goes on; the exit
status is then 1.

A video file (.mp4 .avi .mov .mkv .webm .m4v .mpg .mpeg), a camera index ("0") or
a stream URL (rtsp://, rtmp://, http(s)://) is run frame by frame through the same
code (:mod:`.video`: decode, inference and drawing overlapped) into
``<stem>_annotated.mp4`` and ``<stem>.jsonl``: one line per frame, ``frame`` and
``t`` (seconds) before the fields an image's line has. A source that cannot be
opened is an error (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, Mapping

from .common import add_inference_arguments

if TYPE_CHECKING:
    import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+",
                        help="image files, folders (searched recursively for images), video files, camera indices "
                             "(0, 1) or stream URLs (rtsp://, rtmp://, http(s)://)")
    parser.add_argument("--checkpoint", help="mobiledense training checkpoint")
    parser.add_argument("--model", help="detector name, with --weights (raw state_dict)")
    parser.add_argument("--weights", help="local state_dict file for --model")
    parser.add_argument("--num-classes", type=int, default=91, help="with --model (default 91)")
    parser.add_argument("--label-mapping", choices=("contiguous", "category_id"), default="category_id",
                        help=argparse.SUPPRESS)
    parser.add_argument("--no-ema", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--score-thresh", type=float, default=0.3, help="keep detections above (default 0.3)")
    parser.add_argument("--output-dir", help="default: predict/ beside the checkpoint's run (runs/det/predict)")
    parser.add_argument("--no-overlay", action="store_true",
                        help="only write predictions.jsonl (videos: only <stem>.jsonl, no annotated video)")
    parser.add_argument("--max-frames", type=int, help="videos: stop after N frames (a camera runs until Ctrl-C)")
    add_inference_arguments(parser)


def detection_records(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, names: Mapping[int, str],
                      mapping: Mapping[int, int] | None) -> list[dict[str, Any]]:
    """The ``detections`` field of a JSON line (an image's or a video frame's)."""
    return [{"box_xyxy": [round(float(v), 2) for v in b], "score": round(float(s), 5), "label": int(lab),
             "name": names.get(int(lab)), "category_id": (mapping or {}).get(int(lab), int(lab))}
            for b, s, lab in zip(boxes, scores, labels)]


def _detect(model: Any, image: np.ndarray, device: Any, score_thresh: float) -> tuple[np.ndarray, ...]:
    """(boxes, scores, labels) of one RGB image, scoring at least ``score_thresh``."""
    from .engine.tasks import DetectionTask

    det = DetectionTask.predict(model, image, device)
    keep = det["scores"] >= score_thresh
    return det["boxes"][keep], det["scores"][keep], det["labels"][keep]


def _run_videos(args: argparse.Namespace, videos: list[str], out: Any, model: Any, device: Any,
                names: Mapping[int, str], mapping: Mapping[int, int] | None) -> bool:
    """Each video input -> ``<stem>_annotated.mp4`` + ``<stem>.jsonl``; frames/s printed per video.
    True if Ctrl-C stopped one (its outputs are complete; the inputs after it are not run)."""
    from .evaluation.overlays import draw_detections
    from .video import VideoSink, VideoSource, run_video_pipeline, unique_stems

    def infer(frame):  # noqa: ANN001, ANN202 - video.Frame -> (boxes, scores, labels)
        return _detect(model, frame.image, device, args.score_thresh)

    def draw(frame, det):  # noqa: ANN001, ANN202
        boxes, scores, labels = det
        image = None if args.no_overlay else draw_detections(frame.image, boxes, labels, scores, names)
        record = {"height": frame.image.shape[0], "width": frame.image.shape[1],
                  "detections": detection_records(boxes, scores, labels, names, mapping)}
        return image, record

    for item, stem in unique_stems(videos):
        source = VideoSource(item)
        sink = None if args.no_overlay else VideoSink(out / f"{stem}_annotated.mp4", source.fps)
        stats = run_video_pipeline(source, infer, draw, sink, out / f"{stem}.jsonl", max_frames=args.max_frames,
                                   desc=f"predict {stem}")
        print(f"{item}: {stats.frames} frames{' (stopped by Ctrl-C)' if stats.interrupted else ''}, "
              f"{stats.fps:.1f} frames/s end to end (model {stats.model_ms_per_frame:.1f} ms/frame) -> "
              f"{out}/{stem}.jsonl" + ("" if args.no_overlay else f", {out}/{stem}_annotated.mp4"))
        if stats.interrupted:
            return True
    return False


def run(args: argparse.Namespace) -> int:


    from mobiledense.heads.inference import inference_model

    from .common import output_folder, list_images, read_images, select_device
    from mobiledense.datasets.io import replace_atomically, write_image

    from .evaluation.overlays import draw_detections
    from .eval_det import load_detector
    from .video import check_video_inputs

    out = output_folder(args.output_dir, args.checkpoint, "predict", "runs/det/predict")
    if not 0 <= args.score_thresh <= 1:
        raise ValueError(f"--score-thresh must be in [0, 1], got {args.score_thresh}")
    videos, images = check_video_inputs(args.inputs, args.max_frames)
    files = list_images(images) if images else []
    model, spec = load_detector(args)
    mapping = spec.model.label_to_category_id() if spec is not None else None
    names = {i + 1: n for i, n in enumerate(spec.model.class_names)} if spec is not None else {}
    device = select_device(args.device)
    model = inference_model(model, device, args.eager)
    model.score_thresh = min(model.score_thresh, args.score_thresh)
    if videos:
        out.mkdir(parents=True, exist_ok=True)
        if _run_videos(args, videos, out, model, device, names, mapping) or not files:
            return 0
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    counts = {"boxes": 0, "failed": 0}

    def write(f) -> None:  # noqa: ANN001 - predictions.jsonl, streamed, renamed into place at the end
        for path, image, error in read_images(files, "predict"):
            if image is None:
                counts["failed"] += 1
                f.write(json.dumps({"file": str(path), "error": error}) + "\n")
                continue
            boxes, scores, labels = _detect(model, image, device, args.score_thresh)
            counts["boxes"] += len(boxes)
            f.write(json.dumps({
                "file": str(path), "height": image.shape[0], "width": image.shape[1],
                "detections": detection_records(boxes, scores, labels, names, mapping),
            }) + "\n")
            if not args.no_overlay:
                write_image(out / "overlays" / f"{path.stem}.png", draw_detections(image, boxes, labels, scores, names))

    replace_atomically(out / "predictions.jsonl", write)
    n_boxes, failed = counts["boxes"], counts["failed"]
    print(f"{len(files) - failed} images, {n_boxes} detections >= {args.score_thresh}: {out}/predictions.jsonl"
          + ("" if args.no_overlay else f", overlays in {out}/overlays/"))
    if failed:
        print(f"error: {failed} of {len(files)} images could not be read (their \"error\" lines in "
              f"{out}/predictions.jsonl say why)", file=sys.stderr)
    return 1 if failed else 0
