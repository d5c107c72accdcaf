"""Train on the persona world and measure, with the project's own training jobs.

    train_and_measure(data, test_rows, model, output, dpo) -> {"PT-DPO": accuracy, "DPO": accuracy}

Two models from the same base, with the same DPO settings, on the same training pairs:
    PT-DPO  training type `chosen`: the chosen persona is in the input (prompt · persona -> chosen)
    DPO     training type `none`: no persona (the plain baseline)
Each is trained by tailoring.train_dpo (Ray Train + TRL + LoRA) with the base model as its
reference, merged, and scored on the held-out test pairs by measure.preference_accuracy.
(The paper starts DPO from an SFT model; on the CI-scale world DPO from the base model is
enough to show whether personas reach the model, at half the cost.)
"""

from __future__ import annotations

from typing import Any

from persona_ray.core import storage
from persona_ray.world.measure import preference_accuracy

MODELS = {"PT-DPO": "chosen", "DPO": "none"}  # label -> training type


def train_and_measure(data: str, test_rows: list[dict], model: str, output: str, dpo: dict[str, Any]) -> dict:
    """Train both models on <data>/dpo_train.parquet and return their accuracy per persona type."""
    from persona_ray.core.models import resolve_model
    from persona_ray.tailoring import DPOJobConfig, merge_adapter, train_dpo

    base = resolve_model(model)
    results = {}
    for label, training_type in MODELS.items():
        name = label.lower()
        summary = train_dpo(DPOJobConfig(**{"data": data, "output": storage.join(output, "runs"), "name": name,
                                            "training_type": training_type, "sft_model": base, "val_split": None,
                                            "evaluate": False, **dpo}))
        merged = storage.join(output, "models", name)
        merge_adapter(summary["checkpoint"], base, merged)
        results[label] = preference_accuracy(merged, base, test_rows, with_persona=training_type != "none")
    return results
