"""LoRA adapters (``peft``) on the parts a stage trains, in place of full fine-tuning.

With ``lora_r`` > 0 every part in the stage's ``train_modules`` gets low-rank adapters on its linear
layers (the LM's attention and MLP projections, the projector's linear, the encoder's attention and feed-
forward) and nothing else trains, so disabling the adapters gives back the starting model exactly: DPO's
reference is that model, with no second copy held. An export holds the merged model (plain transformers,
``save_pretrained``) and the adapters alone in ``adapter/`` (``PeftModel.from_pretrained`` on the model the
stage started from).
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings

# The linear layers adapted in each part, by module name in Qwen2AudioForConditionalGeneration.
TARGETS = {
    "lm": r"model\.language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)",
    "projector": r"model\.multi_modal_projector\.linear",
    "encoder": r"model\.audio_tower\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|fc1|fc2)",
}
ADAPTER_DIR = "adapter"


def attach(model, modules: list[str], r: int, alpha: float, dropout: float):
    """The model with fresh adapters on ``modules`` (a ``PeftModel``); only the adapters are trainable."""
    from peft import LoraConfig, get_peft_model

    target = "|".join(f"({TARGETS[m]})" for m in modules)
    config = LoraConfig(r=r, lora_alpha=alpha or 2 * r, lora_dropout=dropout, target_modules=f"^({target})$",
                        bias="none")
    with warnings.catch_warnings():   # peft asks transformers a question it has renamed (a FutureWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        return get_peft_model(model, config)


def is_lora(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


@contextlib.contextmanager
def reference(model):
    """The starting model for the duration: the adapters disabled, no gradients."""
    import torch

    with model.disable_adapter(), torch.no_grad():
        yield model


def merged(model, in_place: bool = False):
    """A plain transformers model with the adapters merged into its weights (a copy unless ``in_place``:
    the live model keeps training)."""
    return (model if in_place else copy.deepcopy(model)).merge_and_unload()


def save_adapters(model, folder: str, base: str) -> None:
    """The adapters alone into ``folder/adapter`` (``adapter_config.json`` names ``base``, the model the stage
    started from, "" for a preset built here)."""
    model.peft_config["default"].base_model_name_or_path = base or None
    model.save_pretrained(os.path.join(folder, ADAPTER_DIR))


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
