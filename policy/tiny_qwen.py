"""An offline, random-init Qwen2.5-VL (config + tokenizer + processor) for the demo and the tests.

It is the real `Qwen2_5_VLForConditionalGeneration` and the real Qwen2.5-VL processor logic at tiny dims, so
every code path the 3B model takes (chat template, image-pad expansion, M-RoPE, hidden states) runs here
without a hub download. The tokenizer is a byte-level BPE trained deterministically from a built-in corpus of
LIBERO-like instructions, so the same config always gives the same token ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2TokenizerFast
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

from geo3d.core.errors import Geo3dError
from geo3d.policy.configuration_policy import TinyVLMConfig
from geo3d.policy.processor_policy import QwenVLImageTextProcessor

RECIPE_VERSION = 1  # bump when the build below changes, so stale cached dirs are not reused
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]

# Same structure as Qwen2.5-VL-Instruct's template (default system turn, images as vision_start/pad/end).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_OBJECTS = ["black bowl", "plate", "ketchup", "alphabet soup", "cream cheese", "wine bottle", "mug", "basket",
            "top drawer", "stove", "microwave", "butter", "milk", "tomato sauce", "orange juice", "book"]
_PLACES = ["on the plate", "in the basket", "on the stove", "on the cabinet", "in the top drawer",
           "between the plate and the ramekin", "next to the cookie box", "on the wooden tray"]


def _corpus() -> list[str]:
    """LIBERO-style instructions plus the chat-template words, in a fixed order (deterministic BPE)."""
    lines = ["You are a helpful assistant.", "system", "user", "assistant"]
    for obj in _OBJECTS:
        lines.append(f"pick up the {obj} and place it in the basket")
        lines += [f"put the {obj} {place}" for place in _PLACES]
        lines += [f"open the {obj}", f"turn on the {obj}", f"push the {obj} to the front"]
    return lines


def build_tokenizer(tiny: TinyVLMConfig):
    """Train the byte-level BPE (Qwen2 pre-tokenizer) and wrap it as the Qwen2 tokenizer class."""

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=tiny.vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    return Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                              unk_token=None, model_max_length=4096)


def build_config(tiny: TinyVLMConfig, tokenizer):
    """A Qwen2_5_VLConfig at tiny dims whose special-token ids are this tokenizer's."""
    ids = tokenizer.convert_tokens_to_ids
    head_dim = tiny.hidden // tiny.heads
    if sum(tiny.mrope_section) * 2 != head_dim:
        raise Geo3dError(f"model.vlm.tiny.mrope_section {tiny.mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    text = dict(vocab_size=len(tokenizer), hidden_size=tiny.hidden, intermediate_size=tiny.intermediate,
                num_hidden_layers=tiny.layers, num_attention_heads=tiny.heads, num_key_value_heads=tiny.kv_heads,
                rope_parameters={"rope_type": "default", "mrope_section": list(tiny.mrope_section),
                                 "rope_theta": 1_000_000.0},
                max_position_embeddings=4096, bos_token_id=None, eos_token_id=ids("<|im_end|>"),
                pad_token_id=ids("<|endoftext|>"))
    vision = dict(depth=tiny.vision_depth, hidden_size=tiny.vision_hidden, intermediate_size=tiny.vision_intermediate,
                  num_heads=tiny.vision_heads, out_hidden_size=tiny.hidden,
                  fullatt_block_indexes=[tiny.vision_depth - 1])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True,
                            image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                            vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))


def build_processor(tiny: TinyVLMConfig, tokenizer):
    image_processor = Qwen2VLImageProcessorPil(min_pixels=tiny.min_pixels, max_pixels=tiny.max_pixels)
    return QwenVLImageTextProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def default_cache_root() -> Path:
    return Path(os.environ.get("GEO3D_CACHE", Path.home() / ".cache" / "geo3d"))


def tiny_model_dir(tiny: TinyVLMConfig, cache_root: str | Path | None = None) -> Path:
    """Build (once) and return the tiny model dir: config.json + tokenizer + processor, no weights.

    Keyed by a hash of the tiny dims and the recipe version; written to a temp dir and renamed into place, so
    concurrent builders (DataLoader workers, several ranks) never see a half-written dir.
    """
    key = hashlib.sha256(json.dumps([RECIPE_VERSION, asdict(tiny)], sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_root) if cache_root else default_cache_root()
    out = root / f"tiny_qwen2_5_vl-{key}"
    if (out / "config.json").is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=root))
    try:
        tokenizer = build_tokenizer(tiny)
        build_config(tiny, tokenizer).save_pretrained(tmp)
        build_processor(tiny, tokenizer).save_pretrained(tmp)
        try:
            os.rename(tmp, out)
        except OSError:  # another process won the race; its dir is identical
            if not (out / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def build_tiny_model(tiny: TinyVLMConfig, model_dir: Path, dtype, attn_implementation: str, meta: bool = False):
    """Random-init Qwen2_5_VLForConditionalGeneration from the tiny dir's config, seeded by `tiny.seed`."""
    config = Qwen2_5_VLConfig.from_pretrained(model_dir, local_files_only=True)
    build = Qwen2_5_VLForConditionalGeneration._from_config
    if meta:
        with torch.device("meta"):
            return build(config, attn_implementation=attn_implementation, dtype=dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tiny.seed)
        return build(config, attn_implementation=attn_implementation, dtype=dtype)
