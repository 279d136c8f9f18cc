"""The policy's processor, saved with every checkpoint (lerobot: the processors are part of the model).

`PolicyProcessor`:
  pre:   upright uint8 images [B,V,S,S,3] + instructions -> Qwen2.5-VL inputs (the model's own chat template and
         tokenizer, `VLMInputs`); raw state [B,8] -> normalized state; raw action chunks -> normalized targets
         (training).
  post:  normalized action chunks -> raw actions (the dataset convention, gripper -1 open / +1 close).

Training (the DataLoader collate), `Policy.from_pretrained` (serve, eval) and `geo3d inspect` all go through this
one object; nothing else normalizes or tokenizes. It must pickle (the collate runs in DataLoader workers).
Saved files: `processor/` (the VLM processor's save_pretrained: tokenizer, chat template, image processor),
`norm_stats.json`, and `processor.json` (the normalization methods, raw dims and the prompt template).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from transformers import Qwen2_5_VLProcessor
from transformers.processing_utils import ProcessorMixin

from geo3d.core.errors import Geo3dError
from geo3d.data.norm_stats import Normalizer, load_norm_stats
from geo3d.policy.configuration_policy import PolicyConfig

VLM_INPUT_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
PROCESSOR_FILE = "processor.json"
PROCESSOR_DIR = "processor"
NORM_STATS_FILE = "norm_stats.json"
PROCESSOR_VERSION = 1


class QwenVLImageTextProcessor(Qwen2_5_VLProcessor):
    """The Qwen2.5-VL processor restricted to images + text.

    transformers' video processor needs torchvision (absent here, optional on clusters); the policy never uses
    video, so this subclass declares only the image processor and the tokenizer. The image-pad expansion and
    chat templating are inherited unchanged. It loads a real Qwen2.5-VL checkpoint dir as-is.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)


def load_hf_processor(model_dir: str | Path) -> QwenVLImageTextProcessor:
    """Load the processor from a local dir only (never the hub); left padding for batched prompts."""
    proc = QwenVLImageTextProcessor.from_pretrained(str(model_dir), local_files_only=True)
    proc.tokenizer.padding_side = "left"
    return proc


class VLMInputs:
    """Upright uint8 images [B,V,S,S,3] + instructions -> the VLM's input tensors (one prompt format for
    training and deployment)."""

    def __init__(self, hf_processor: QwenVLImageTextProcessor, template: str = "{instruction}"):
        self.hf = hf_processor
        self.hf.tokenizer.padding_side = "left"
        self.template = template  # model.vlm.prompt_template

    @classmethod
    def from_dir(cls, model_dir: str | Path, template: str = "{instruction}") -> "VLMInputs":
        return cls(load_hf_processor(model_dir), template)

    def prompt(self, instruction: str, num_views: int) -> str:
        """One user turn: the V images, then the templated instruction (the fork's plain `str.replace` of
        "{instruction}"); ends with the assistant generation prompt."""
        text = self.template.replace("{instruction}", instruction)
        content = [{"type": "image"} for _ in range(num_views)] + [{"type": "text", "text": text}]
        messages = [{"role": "user", "content": content}]
        return self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def __call__(self, images: Any, instructions: Sequence[str]) -> dict:
        arr = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
        if arr.ndim != 5 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [B,V,S,S,3], got {arr.dtype} {tuple(arr.shape)}")
        if len(instructions) != arr.shape[0]:
            raise ValueError(f"{len(instructions)} instructions for a batch of {arr.shape[0]} image sets")
        num_views = arr.shape[1]
        texts = [self.prompt(str(ins), num_views) for ins in instructions]
        flat = [arr[b, v] for b in range(arr.shape[0]) for v in range(num_views)]
        out = self.hf(text=texts, images=flat, padding=True, return_tensors="pt")
        return {k: out[k] for k in VLM_INPUT_KEYS if k in out}


@dataclass(frozen=True)
class NormalizationSpec:
    """What processor.json records: the normalization methods (model.normalization at training time)."""

    action: str
    state: str
    raw_action_dims: tuple[int, ...]

    @classmethod
    def from_cfg(cls, norm_cfg: Any) -> "NormalizationSpec":
        return cls(str(norm_cfg.action), str(norm_cfg.state), tuple(int(d) for d in norm_cfg.raw_action_dims))


class PolicyProcessor:
    """VLM inputs + state/action normalization in, action unnormalization out."""

    def __init__(self, vlm_inputs: VLMInputs, stats: dict[str, Any], spec: NormalizationSpec) -> None:
        self.vlm_inputs = vlm_inputs
        self.stats = stats
        self.spec = spec
        self.action = Normalizer(stats, "action", spec.action, spec.raw_action_dims)
        self.state = Normalizer(stats, "state", spec.state)

    @classmethod
    def for_training(cls, vlm_dir: str | Path, model_cfg: Any, stats: dict[str, Any]) -> "PolicyProcessor":
        """A new run's processor: the base VLM's processor files (`vlm_dir`: `policy.vlm.model_dir`, or
        `geo3d.policy.vlm.vlm_source_dir` without a model), model.vlm.prompt_template and model.normalization,
        the run's norm stats."""
        vlm = PolicyConfig.from_cfg(model_cfg).vlm
        if not (Path(vlm_dir) / "tokenizer_config.json").is_file():
            raise Geo3dError(f"model.vlm.source={vlm.source} has no processor files (tokenizer_config.json) in "
                             f"{vlm_dir}: point it at a full Qwen2.5-VL checkpoint directory")
        return cls(VLMInputs.from_dir(vlm_dir, vlm.prompt_template), stats,
                   NormalizationSpec.from_cfg(model_cfg.normalization))

    # -- pre ------------------------------------------------------------------------------------------
    def preprocess(self, images: Any, instructions: Sequence[str], state: Any) -> dict[str, Any]:
        """A model batch: VLM inputs + normalized float32 state [B, state_dim]."""
        batch = dict(self.vlm_inputs(images, instructions))
        raw = np.asarray(state, dtype=np.float32).reshape(len(instructions), -1)
        batch["state"] = torch.from_numpy(np.asarray(self.state.normalize(raw), dtype=np.float32))
        return batch

    def normalize_actions(self, actions: Any) -> np.ndarray:
        """Raw action chunks [..., action_dim] -> the flow-matching targets."""
        return np.asarray(self.action.normalize(np.asarray(actions, dtype=np.float32)), dtype=np.float32)

    # -- post -----------------------------------------------------------------------------------------
    def postprocess(self, normalized: Any) -> np.ndarray:
        """Model output [..., action_dim] -> raw float32 actions."""
        arr = normalized.float().cpu().numpy() if isinstance(normalized, torch.Tensor) else np.asarray(normalized)
        return np.asarray(self.action.unnormalize(arr), dtype=np.float32)

    # -- files ----------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """Write processor/, norm_stats.json and processor.json into `directory` (a checkpoint being written)."""
        d = Path(directory)
        self.vlm_inputs.hf.save_pretrained(str(d / PROCESSOR_DIR))
        (d / NORM_STATS_FILE).write_text(json.dumps(self.stats, indent=2))
        record = {"version": PROCESSOR_VERSION, "normalization": asdict(self.spec),
                  "prompt_template": self.vlm_inputs.template,  # model.vlm.prompt_template (the fork: its CoT)
                  "steps": ["tokenize(images, prompt_template(instruction))", f"normalize(state, {self.spec.state})",
                            f"unnormalize(action, {self.spec.action}, raw dims {list(self.spec.raw_action_dims)})"]}
        (d / PROCESSOR_FILE).write_text(json.dumps(record, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "PolicyProcessor":
        """The processor a checkpoint was trained with, from its own files only (no base model dir)."""
        d = Path(directory)
        path = d / PROCESSOR_FILE
        if not path.is_file() or not (d / PROCESSOR_DIR).is_dir():
            raise Geo3dError(f"{d} has no processor ({PROCESSOR_FILE} + {PROCESSOR_DIR}/): it was written by an "
                             f"older geo3d; see train/README.md 'Old checkpoints'")
        record = json.loads(path.read_text())
        n = record["normalization"]
        spec = NormalizationSpec(n["action"], n["state"], tuple(n["raw_action_dims"]))
        # checkpoints written before prompt templates existed used the raw instruction
        vlm_inputs = VLMInputs.from_dir(d / PROCESSOR_DIR, record.get("prompt_template", "{instruction}"))
        return cls(vlm_inputs, load_norm_stats(d / NORM_STATS_FILE), spec)
