"""Images + instruction -> Qwen2.5-VL inputs, through the model's own chat template.

`PolicyProcessor` is what the DataLoader collate calls (in worker processes, so it must pickle) and what the
policy server calls at inference: one prompt format for training and deployment.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from transformers import Qwen2_5_VLProcessor
from transformers.processing_utils import ProcessorMixin

VLM_INPUT_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")


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


def load_hf_processor(model_dir: str) -> QwenVLImageTextProcessor:
    """Load the processor from a local dir only (never the hub); left padding for batched prompts."""
    proc = QwenVLImageTextProcessor.from_pretrained(model_dir, local_files_only=True)
    proc.tokenizer.padding_side = "left"
    return proc


class PolicyProcessor:
    """Callable turning a batch of upright uint8 images [B,V,S,S,3] and instructions into VLM inputs."""

    def __init__(self, hf_processor: QwenVLImageTextProcessor, template: str = "{instruction}"):
        self.hf = hf_processor
        self.hf.tokenizer.padding_side = "left"
        self.template = template  # model.vlm.prompt_template

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
