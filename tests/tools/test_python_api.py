"""The README's Python API (a notebook trains without the CLI): spec -> train -> the best checkpoint -> model."""

from __future__ import annotations

from pathlib import Path

import torch


def test_train_from_python_and_load_the_best_model(tmp_path: Path) -> None:
    from mobiledense.heads import model_spec
    from mobiledense.tools.engine import CocoDataSpec, RunSpec, TrainConfig
    from mobiledense.tools.engine.tasks import load_trained_model, train

    spec = RunSpec(model=model_spec("ssdlite_mobilenet_v3_small", size=96),
                   data=CocoDataSpec(synthetic_images=20),
                   recipe=TrainConfig(epochs=2, batch_size=4, lr=2e-3, optimizer="adamw", warmup_iters=1, workers=0,
                                      eval_every=1))
    metrics, trainer = train(spec, tmp_path / "run", progress=False)
    assert "mAP" in metrics and trainer.best["metric"] == "mAP" and trainer.ckpts.best_path.is_file()
    model, stored = load_trained_model(trainer.ckpts.best_path)
    assert stored.model.num_classes == 7 and stored.data.synthetic_images == 20  # classes from the synthetic set
    with torch.no_grad():
        out = model([torch.rand(3, 120, 90)])
    assert set(out[0]) == {"boxes", "scores", "labels"}
