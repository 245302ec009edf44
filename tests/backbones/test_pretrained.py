"""Named pretrained weights: every converter exact against its library's own model, and the downloads.

No test touches the network. torchvision's files are laid out in a temporary ``$TORCH_HOME``
cache under their official names (random, calibrated weights of torchvision's own model), so
the names resolve as on a user's machine after the first download; the download path itself
(fetch, hash refusal, cache reuse, the offline error) is served by a local HTTP server on
127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch
import torchvision

from mobiledense.backbones import create_backbone, create_classifier
from mobiledense.backbones.pretrained import (WEIGHTS, OfflineError, PretrainedWeights, get_weights, register_weights,
                                              resolve_weights, weights_state_dict)
from mobiledense.heads import create_model
from mobiledense.tools.benchmark import calibrate_

TORCHVISION_CLASSIFIERS = sorted(n for n, e in WEIGHTS.items() if e.source == "torchvision" and e.kind == "classifier")
TIMM = sorted(n for n, e in WEIGHTS.items() if e.source == "timm")


@pytest.fixture()
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    return tmp_path / "torch" / "hub" / "checkpoints"


def lay_out(cache: Path, name: str, state_dict: dict) -> Path:
    """Put a state_dict in the cache under the official file name of a torchvision entry."""
    path = cache / get_weights(name).url.rsplit("/", 1)[-1]
    torch.save(state_dict, path)
    return path


def _tv_classifier(name: str) -> torch.nn.Module:
    weights = get_weights(name).torchvision_weights()
    builder = getattr(torchvision.models, weights.__class__.__name__.replace("_Weights", "").lower())
    torch.manual_seed(0)
    model = builder(weights=None)
    return calibrate_(model, lambda m: m(torch.randn(4, 3, 128, 128)))


@pytest.mark.parametrize("name", TORCHVISION_CLASSIFIERS)
def test_torchvision_classifier_weights_by_name_are_exact(name: str, torch_home: Path) -> None:
    tv = _tv_classifier(name)
    lay_out(torch_home, name, tv.state_dict())
    entry = get_weights(name)
    ours = create_classifier(entry.target, weights=name).eval()  # the entry's options (padding) applied
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), atol=1e-5, rtol=1e-5)
    if entry.default:  # the "imagenet" alias of the backbone, as --weights-backbone imagenet loads it
        backbone = create_backbone(entry.target, weights="imagenet")
        for k, v in backbone.state_dict().items():
            assert torch.equal(v, ours.backbone.state_dict()[k]), k


@pytest.mark.parametrize("name", TIMM)
def test_timm_converters_are_exact(name: str) -> None:
    timm = pytest.importorskip("timm")
    entry = get_weights(name)
    torch.manual_seed(0)
    ref = timm.create_model(entry.reference.split(".")[0], pretrained=False)
    calibrate_(ref, lambda m: m(torch.randn(4, 3, 128, 128)))
    sd = entry.convert(ref.state_dict()) if entry.convert else ref.state_dict()
    ours = create_classifier(entry.target, weights=sd, **entry.options).eval()
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_timm_variant_that_differs_is_refused() -> None:
    """Without the entry's option (ReLU6) the layout is the same but the network is not: so the option is
    part of the entry, and a model built otherwise is refused instead of loaded approximately."""
    with pytest.raises(ValueError, match="need activation='relu6'"):
        create_classifier("mobilenet_v1", weights="imagenet", activation="relu")
    from mobiledense.backbones.pretrained import from_timm_positional

    with pytest.raises(ValueError, match="differs from ours at"):
        from_timm_positional({"a": torch.zeros(3)}, {"b": torch.zeros(4)}, "x")


def test_coco_detector_by_name_equals_torchvision(torch_home: Path) -> None:
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large as tv_ssdlite

    torch.manual_seed(0)  # the COCO architecture: torchvision builds it without ImageNet backbone, reduced tail
    tv = tv_ssdlite(weights=None, weights_backbone=None).eval()
    x = torch.rand(2, 3, 320, 320) * 2 - 1
    calibrate_(tv, lambda m: m.head(list(m.backbone(x).values())))
    lay_out(torch_home, "torchvision:SSDLite320_MobileNet_V3_Large_Weights.COCO_V1", tv.state_dict())
    ours = create_model("ssdlite320_mobilenet_v3_large", weights="coco").eval()
    spec = ours.spec
    assert spec.num_classes == 91 and spec.class_names[0] == "person" and spec.category_ids[:3] == (1, 2, 3)
    assert spec.backbone.reduced_tail  # the entry's option: 3.44 M parameters, as torchvision's COCO model
    assert sum(p.numel() for p in ours.parameters()) == get_weights("torchvision:SSDLite320_MobileNet_V3_Large_"
                                                                    "Weights.COCO_V1").torchvision_weights().meta["num_params"]
    with torch.no_grad():
        ref = tv.head(list(tv.backbone(x).values()))
        got = ours.head_outputs(x)[0]
        torch.testing.assert_close(got["cls_logits"], ref["cls_logits"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got["bbox_regression"], ref["bbox_regression"], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="have 91 classes, the model 7: to start from them with other classes, "
                                         "fine-tune"):
        create_model("ssdlite320_mobilenet_v3_large", num_classes=7, weights="coco")


def test_coco_segmenter_by_name_equals_torchvision(torch_home: Path) -> None:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large as tv_lraspp

    from mobiledense.heads.segmenter import Normalize

    torch.manual_seed(0)
    tv = tv_lraspp(weights=None, weights_backbone=None, num_classes=21)
    calibrate_(tv, lambda m: m(torch.randn(2, 3, 128, 256)))
    lay_out(torch_home, "torchvision:LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1", tv.state_dict())
    ours = create_model("lraspp_mobilenet_v3_large", weights="coco").eval()
    assert ours.spec.num_classes == 21 and ours.spec.class_names[:2] == ("__background__", "aeroplane")
    x = torch.rand(1, 3, 128, 256)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(Normalize()(x))["out"], atol=1e-5, rtol=1e-5)


def test_names_resolve_per_target_and_say_what_exists() -> None:
    assert resolve_weights("imagenet", "mobilenet_v3_large", "backbone").name.endswith("IMAGENET1K_V1")
    with pytest.raises(KeyError, match="no 'imagenet' weights for shufflenet_v1_g3; 'imagenet' exists for: "):
        resolve_weights("imagenet", "shufflenet_v1_g3", "backbone")
    with pytest.raises(ValueError, match="are classifier weights of mobilenet_v2, not model weights"):
        resolve_weights("torchvision:MobileNet_V2_Weights.IMAGENET1K_V2", "ssdlite_mobilenet_v2", "model")
    with pytest.raises(KeyError, match="unknown weights 'torchvision:Nope.V1'"):
        get_weights("torchvision:Nope.V1")


# ---------------------------------------------------------------------- downloads (local server)


class _Server:
    """Serves a folder on 127.0.0.1; ``hits`` counts the requests."""

    def __init__(self, root: Path) -> None:
        server = self
        self.hits = 0

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):  # noqa: ANN002, ANN003
                super().__init__(*a, directory=str(root), **kw)

            def do_GET(self):  # noqa: ANN201, N802
                server.hits += 1
                return super().do_GET()

            def log_message(self, *a):  # noqa: ANN002
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture()
def server(tmp_path: Path):
    (tmp_path / "www").mkdir()
    s = _Server(tmp_path / "www")
    yield s
    s.close()


def _entry(name: str, url: str) -> PretrainedWeights:
    WEIGHTS.pop(name, None)
    return register_weights(PretrainedWeights(name, "classifier", "mobilenet_v3_small", "url", file_url=url))


def test_download_is_hash_checked_cached_and_reused(server: _Server, torch_home: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    sd = create_backbone("mobilenet_v3_small").state_dict()
    raw = tmp_path / "www" / "raw.pth"
    torch.save(sd, raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    good = raw.rename(tmp_path / "www" / f"mnv3s-{digest[:8]}.pth")
    try:
        _entry("url:test-good", f"{server.url}/{good.name}")
        model = create_backbone("mobilenet_v3_small", weights="url:test-good")
        assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())
        assert server.hits == 1 and (torch_home / good.name).is_file()  # in torch.hub's cache
        create_backbone("mobilenet_v3_small", weights="url:test-good")
        assert server.hits == 1  # the second time from the cache

        bad = tmp_path / "www" / "mnv3s-deadbeef.pth"
        bad.write_bytes(good.read_bytes())
        _entry("url:test-bad", f"{server.url}/{bad.name}")
        with pytest.raises(ValueError, match="its sha256 does not match the hash in its file name"):
            create_backbone("mobilenet_v3_small", weights="url:test-bad")
        assert not (torch_home / bad.name).exists()  # refused files are not kept
    finally:
        WEIGHTS.pop("url:test-good", None)
        WEIGHTS.pop("url:test-bad", None)


def test_offline_is_a_clear_error(torch_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MOBILEDENSE_WEIGHTS_MIRROR", f"http://127.0.0.1:{port}/weights")
    entry = get_weights("torchvision:MobileNet_V3_Small_Weights.IMAGENET1K_V1")
    with pytest.raises(OfflineError) as e:
        weights_state_dict(entry)
    msg = str(e.value)
    assert entry.url in msg and str(torch_home / "mobilenet_v3_small-047dcff4.pth") in msg
    assert "mobiledense weights download" in msg and "--weights-backbone FILE" in msg

    timm = pytest.importorskip("timm")  # noqa: F841 - timm's own hub download, offline
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(OfflineError, match="cannot fetch weights timm:mobilenetv1_100"):
        weights_state_dict(get_weights("timm:mobilenetv1_100.ra4_e3600_r224_in1k"))


def test_weights_cli_lists_and_downloads(server: _Server, tmp_path: Path, capsys) -> None:
    from mobiledense.tools.cli import main

    assert main(["weights", "list", "--target", "ssdlite320_mobilenet_v3_large"]) == 0
    out = capsys.readouterr().out
    assert "SSDLite320_MobileNet_V3_Large_Weights.COCO_V1" in out and "box_map 21.3" in out
    torch.save({"w": torch.ones(2)}, tmp_path / "www" / "x.pth")
    digest = hashlib.sha256((tmp_path / "www" / "x.pth").read_bytes()).hexdigest()[:8]
    (tmp_path / "www" / "x.pth").rename(tmp_path / "www" / f"x-{digest}.pth")
    try:
        _entry("url:test-cli", f"{server.url}/x-{digest}.pth")
        assert main(["weights", "download", "url:test-cli", "--to", str(tmp_path / "got")]) == 0
        assert torch.equal(torch.load(tmp_path / "got" / f"x-{digest}.pth")["w"], torch.ones(2))
    finally:
        WEIGHTS.pop("url:test-cli", None)
