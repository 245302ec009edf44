"""``predict det|seg`` on videos (:mod:`mobiledense.tools.video`): outputs, per-frame equality with
image mode, errors, max_frames, and a pipeline that never hangs on a failing stage.

The test video is lossless (FFV1 in .avi); per-frame results are still compared with image
mode on the frames as OpenCV decodes them from that video, which is what the pipeline sees.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import pytest
import torch

from mobiledense.datasets import CocoDetection, make_synthetic_coco
from mobiledense.heads import create_model, create_segmenter, model_spec
from mobiledense.tools.benchmark import calibrate_, calibrate_detector_
from mobiledense.tools.cli import main
from mobiledense.tools.engine import CityscapesDataSpec, CocoDataSpec
from mobiledense.tools.engine.tasks import DetectionTask, save_model_checkpoint
from mobiledense.tools.video import Frame, VideoSink, is_video_input, run_video_pipeline, video_stem

H, W, N, FPS = 96, 128, 12, 10.0


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    return make_synthetic_coco(tmp_path_factory.mktemp("shapes"), num_images=N, size_range=(96, 160),
                               val_fraction=0.5, seed=1)


@pytest.fixture(scope="module")
def video(data, tmp_path_factory) -> Path:
    """N frames of synthetic shapes, W x H, FFV1 (lossless) at FPS."""
    images = sorted(p for split in data.values() for p in split[0].glob("*.jpg"))[:N]
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), FPS, (W, H))
    assert writer.isOpened()
    for p in images:
        writer.write(cv2.resize(cv2.imread(str(p)), (W, H), interpolation=cv2.INTER_AREA))
    writer.release()
    return path


@pytest.fixture(scope="module")
def frames_dir(video, tmp_path_factory) -> Path:
    """The video's frames as OpenCV decodes them, as PNGs (image mode's input)."""
    out = tmp_path_factory.mktemp("frames")
    cap = cv2.VideoCapture(str(video))
    i = 0
    while (frame := cap.read()[1]) is not None:
        cv2.imwrite(str(out / f"{i:06d}.png"), frame)
        i += 1
    assert i == N
    return out


@pytest.fixture(scope="module")
def det_checkpoint(data, tmp_path_factory) -> Path:
    """As in test_inference_cli: calibrated weights, background-dominated scores (as after training)."""
    (images, ann), (val_images, val_ann) = data["train"], data["val"]
    torch.manual_seed(0)
    model = create_model(model_spec("ssdlite_mobilenet_v3_small", size=128,
                                    **DetectionTask.class_info(CocoDetection(images, ann))))
    calibrate_detector_(model)
    spec = CocoDataSpec(train_images=str(images), train_ann=str(ann), val_images=str(val_images), val_ann=str(val_ann))
    return save_model_checkpoint(model, spec, tmp_path_factory.mktemp("det") / "last.pt")


def _video_info(path: Path) -> tuple[int, int, int]:
    """(decoded frames, width, height) of a video file."""
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    n = 0
    while cap.read()[0]:
        n += 1
    return n, int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_video_inputs_are_recognised() -> None:
    assert all(map(is_video_input, ["a.mp4", "b.MKV", "0", "12", "rtsp://cam/live", "http://h:8080/v.mjpg"]))
    assert not any(map(is_video_input, ["a.jpg", "photos", "a.png"]))
    assert (video_stem("x/clip.mov"), video_stem("1"), video_stem("rtsp://10.0.0.2:554/live/ch1")) == \
        ("clip", "camera1", "10.0.0.2_live_ch1")


def test_predict_det_on_a_video_equals_image_mode_frame_by_frame(video, frames_dir, det_checkpoint,
                                                                 tmp_path: Path) -> None:
    common = ["--checkpoint", str(det_checkpoint), "--score-thresh", "0.05", "--device", "cpu"]
    assert main(["predict", "det", str(video), *common, "--output-dir", str(tmp_path / "v")]) == 0
    assert main(["predict", "det", str(frames_dir), *common, "--no-overlay", "--output-dir", str(tmp_path / "i")]) == 0
    assert _video_info(tmp_path / "v" / "clip_annotated.mp4") == (N, W, H)
    lines = _lines(tmp_path / "v" / "clip.jsonl")
    assert [r["frame"] for r in lines] == list(range(N))
    assert [r["t"] for r in lines] == pytest.approx([i / FPS for i in range(N)], abs=1e-3)
    images = _lines(tmp_path / "i" / "predictions.jsonl")
    assert [Path(r["file"]).stem for r in images] == [f"{i:06d}" for i in range(N)]
    for frame, image in zip(lines, images):
        assert (frame["height"], frame["width"]) == (image["height"], image["width"]) == (H, W)
        assert frame["detections"] == image["detections"], frame["frame"]  # same pixels, same code: equal
    assert sum(len(r["detections"]) for r in lines) > 5
    assert not list((tmp_path / "v").glob(".*"))  # no temp files left


def test_max_frames_and_no_overlay(video, det_checkpoint, tmp_path: Path) -> None:
    assert main(["predict", "det", str(video), "--checkpoint", str(det_checkpoint), "--device", "cpu",
                 "--max-frames", "5", "--no-overlay", "--output-dir", str(tmp_path)]) == 0
    assert [r["frame"] for r in _lines(tmp_path / "clip.jsonl")] == list(range(5))
    assert not (tmp_path / "clip_annotated.mp4").exists()


def test_unopenable_sources_exit_2_naming_them(det_checkpoint, tmp_path: Path, capsys) -> None:
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    for source, message in ((tmp_path / "missing.mp4", "video not found"),
                            (tmp_path / "broken.mp4", "cannot open video source"), ("99", "cannot open video source")):
        assert main(["predict", "det", str(source), "--checkpoint", str(det_checkpoint), "--device", "cpu",
                     "--output-dir", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert message in err and str(source) in err, err
    assert main(["predict", "det", str(tmp_path / "broken.mp4"), "--checkpoint", str(det_checkpoint),
                 "--max-frames", "0"]) == 2
    assert "--max-frames must be >= 1, got 0" in capsys.readouterr().err


def test_predict_seg_on_a_video_equals_image_mode(video, frames_dir, tmp_path: Path) -> None:
    from mobiledense.datasets.cityscapes_labels import label_ids_to_train_ids

    torch.manual_seed(0)
    model = create_segmenter("mobilenet_v3_small", 19, pool="global")
    calibrate_(model, lambda m: m(torch.rand(2, 3, H, W)))
    ckpt = save_model_checkpoint(model, CityscapesDataSpec(root=str(tmp_path), crop=(H, W)), tmp_path / "last.pt")
    common = ["--checkpoint", str(ckpt), "--device", "cpu"]
    assert main(["predict", "seg", str(video), *common, "--save-masks", "--max-frames", "6",
                 "--output-dir", str(tmp_path / "v")]) == 0
    assert main(["predict", "seg", str(frames_dir), *common, "--output-dir", str(tmp_path / "i")]) == 0
    assert _video_info(tmp_path / "v" / "clip_annotated.mp4") == (6, W, H)  # no legend: the frames' own size
    lines = _lines(tmp_path / "v" / "clip.jsonl")
    assert [r["frame"] for r in lines] == list(range(6))
    for r in lines:
        mask = cv2.imread(str(tmp_path / "v" / "clip_masks" / f"{r['frame']:06d}_labelIds.png"), cv2.IMREAD_UNCHANGED)
        image_mode = cv2.imread(str(tmp_path / "i" / f"{r['frame']:06d}_labelIds.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(mask, image_mode)
        train_ids = label_ids_to_train_ids(mask)
        shares = {c["train_id"]: c["share"] for c in r["classes"]}
        assert sum(shares.values()) == pytest.approx(1, abs=1e-3)
        for cls, share in shares.items():
            assert share == pytest.approx((train_ids == cls).mean(), abs=1e-5)
        assert [c["share"] for c in r["classes"]] == sorted(shares.values(), reverse=True)


class _Endless:
    """A camera-like source: frames forever, no frame count."""

    name, frame_count = "fake camera", None

    def __init__(self) -> None:
        self.i, self.closed = 0, False

    def read(self) -> Frame:
        self.i += 1
        return Frame(self.i - 1, (self.i - 1) / 30, np.full((H, W, 3), self.i % 256, np.uint8))

    def close(self) -> None:
        self.closed = True


def _within(seconds: float, fn: Callable[[], Any]) -> Any:
    """``fn()`` in a thread; fails if it is still running after ``seconds`` (a hang)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "run_video_pipeline hung"
    if "error" in box:
        raise box["error"]
    return box["value"]


def _draw(frame: Frame, result: Any) -> tuple[np.ndarray, dict]:
    return frame.image[..., ::-1], {"result": result}


def test_a_failing_stage_propagates_without_hanging_and_leaves_no_files(tmp_path: Path) -> None:
    def bad_infer(frame: Frame) -> int:
        if frame.index == 3:
            raise RuntimeError("infer failed at frame 3")
        return frame.index

    def bad_draw(frame: Frame, result: Any) -> tuple[np.ndarray, dict]:
        if frame.index == 2:
            raise RuntimeError("draw failed at frame 2")
        return _draw(frame, result)

    for infer, draw, message in ((bad_infer, _draw, "infer failed"), (lambda f: f.index, bad_draw, "draw failed")):
        source = _Endless()
        with pytest.raises(RuntimeError, match=message):
            _within(20, lambda: run_video_pipeline(source, infer, draw, VideoSink(tmp_path / "o.mp4", 30),
                                                   tmp_path / "o.jsonl", progress=False))
        assert source.closed
        assert not list(tmp_path.iterdir())  # partial video and JSONL removed
    assert not [t for t in threading.enumerate() if t.name.startswith("video-")]


def test_an_endless_stream_stops_at_max_frames_or_ctrl_c_and_is_finalised(tmp_path: Path) -> None:
    def slow(frame: Frame) -> int:  # random latencies: order must still hold
        time.sleep(float(np.random.default_rng(frame.index).uniform(0, 0.004)))
        return frame.index

    stats = _within(20, lambda: run_video_pipeline(_Endless(), slow, _draw, VideoSink(tmp_path / "a.mp4", 30),
                                                   tmp_path / "a.jsonl", max_frames=7, progress=False))
    assert stats.frames == 7 and not stats.interrupted and stats.fps > 0 and stats.model_ms_per_frame >= 0
    assert [(r["frame"], r["result"]) for r in _lines(tmp_path / "a.jsonl")] == [(i, i) for i in range(7)]
    assert _video_info(tmp_path / "a.mp4") == (7, W, H)

    def ctrl_c(frame: Frame) -> int:  # SIGINT raises KeyboardInterrupt in the calling (inference) thread
        if frame.index == 5:
            raise KeyboardInterrupt
        return frame.index

    stats = _within(20, lambda: run_video_pipeline(_Endless(), ctrl_c, _draw, VideoSink(tmp_path / "b.mp4", 30),
                                                   tmp_path / "b.jsonl", progress=False))
    assert stats.interrupted and stats.frames == 5  # every frame inferred before Ctrl-C is written
    assert [r["frame"] for r in _lines(tmp_path / "b.jsonl")] == list(range(5))
    assert _video_info(tmp_path / "b.mp4") == (5, W, H)
