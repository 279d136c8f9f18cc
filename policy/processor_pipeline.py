"""The policy's pre/post-processing pipeline, saved with every checkpoint (lerobot: the processors are the model).

preprocess:  upright uint8 images [B,V,S,S,3] + instructions -> VLM inputs (the Qwen2.5-VL chat template and
             tokenizer), raw state [B,8] -> normalized state, raw action chunks -> normalized targets (training).
postprocess: normalized action chunks -> raw actions (the dataset convention, gripper -1 open / +1 close).

Training (the DataLoader collate), `load_policy` (inference, `geo3d serve`) and `geo3d eval` all go through
this one object; nothing else normalizes. It must pickle (the collate runs in DataLoader workers).
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

from geo3d.data.norm_stats import Normalizer, load_norm_stats
from geo3d.core.errors import Geo3dError

PIPELINE_FILE = "processor.json"
PROCESSOR_DIR = "processor"
NORM_STATS_FILE = "norm_stats.json"
PIPELINE_VERSION = 1


@dataclass(frozen=True)
class NormalizationSpec:
    """What processor.json records: the normalization methods (model.normalization at training time)."""

    action: str
    state: str
    raw_action_dims: tuple[int, ...]

    @classmethod
    def from_cfg(cls, norm_cfg: Any) -> "NormalizationSpec":
        return cls(str(norm_cfg.action), str(norm_cfg.state), tuple(int(d) for d in norm_cfg.raw_action_dims))


class PolicyPipeline:
    """Tokenization + state/action normalization in, action unnormalization out."""

    def __init__(self, tokenizer: Any, stats: dict[str, Any], spec: NormalizationSpec) -> None:
        self.tokenizer = tokenizer  # geo3d.policy.processor_policy.PolicyProcessor
        self.stats = stats
        self.spec = spec
        self.action = Normalizer(stats, "action", spec.action, spec.raw_action_dims)
        self.state = Normalizer(stats, "state", spec.state)

    # -- pre ------------------------------------------------------------------------------------------
    def preprocess(self, images: Any, instructions: Sequence[str], state: Any) -> dict[str, Any]:
        """A model batch: VLM inputs + normalized float32 state [B, state_dim]."""
        batch = dict(self.tokenizer(images, instructions))
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
        self.tokenizer.hf.save_pretrained(str(d / PROCESSOR_DIR))
        (d / NORM_STATS_FILE).write_text(json.dumps(self.stats, indent=2))
        record = {"version": PIPELINE_VERSION, "normalization": asdict(self.spec),
                  "prompt_template": self.tokenizer.template,  # model.vlm.prompt_template (the fork: its CoT)
                  "steps": ["tokenize(images, prompt_template(instruction))", f"normalize(state, {self.spec.state})",
                            f"unnormalize(action, {self.spec.action}, raw dims {list(self.spec.raw_action_dims)})"]}
        (d / PIPELINE_FILE).write_text(json.dumps(record, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "PolicyPipeline":
        """The pipeline a checkpoint was trained with, from its own files only (no base model dir)."""
        from geo3d.policy.processor_policy import PolicyProcessor, load_hf_processor
        d = Path(directory)
        path = d / PIPELINE_FILE
        if not path.is_file() or not (d / PROCESSOR_DIR).is_dir():
            raise Geo3dError(f"{d} has no processor pipeline ({PIPELINE_FILE} + {PROCESSOR_DIR}/): it was written "
                             f"by an older geo3d; see train/README.md 'Old checkpoints'")
        record = json.loads(path.read_text())
        n = record["normalization"]
        spec = NormalizationSpec(n["action"], n["state"], tuple(n["raw_action_dims"]))
        # checkpoints written before prompt templates existed used the raw instruction
        tokenizer = PolicyProcessor(load_hf_processor(str(d / PROCESSOR_DIR)),
                                    record.get("prompt_template", "{instruction}"))
        return cls(tokenizer, load_norm_stats(d / NORM_STATS_FILE), spec)
